"""The bundled toy world: procedural scenes (`world`), the model's layout (`model`), its vocabulary
(`vocabulary`), its faces (`faces`) and the judges (`Judge`). What is measured in it (the evaluation suites,
the effect harness, `personalize quickstart`) lives in `personalize.eval`."""


def __getattr__(name):  # Judge without importing torch at package import
    if name == "Judge":
        from personalize.toyworld.judge import Judge

        return Judge
    raise AttributeError(name)
