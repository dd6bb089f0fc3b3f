"""The bundled toy world: procedural scenes (`world`), the model's layout (`model`), the judges
(`Judge`), the evaluation suites (`evaluate`) and `personalize quickstart` (`quickstart`)."""


def __getattr__(name):  # Judge without importing torch at package import
    if name == "Judge":
        from personalize.toyworld.judge import Judge

        return Judge
    raise AttributeError(name)
