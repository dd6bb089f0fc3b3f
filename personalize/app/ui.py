"""The Gradio layout and its callbacks. No ML code here: every callback calls `personalize.studio.Studio`.

One queue for the model (`concurrency_id="model"`, one generation at a time: a diffusers pipeline is not
thread-safe and a GPU runs one job well), bounded by `launch`'s queue size, so extra requests are refused at once
instead of waiting forever.
"""

from __future__ import annotations

import gradio as gr

from personalize.errors import PersonalizeError

SUPPRESS_MODES = ["off", "swr", "swr+ito"]
FACE_EDIT, SUPPRESS_EDIT = "face2diffusion", "suppress_eot"  # the two edits with controls of their own
SHOW_MIN_SIDE = 256  # smaller images (the toy world's 32 px) are enlarged for display, nearest-neighbour


def shown(image):
    """`image` enlarged by a whole factor with nearest-neighbour when its short side is under SHOW_MIN_SIDE,
    so 32 px pixels stay crisp instead of the browser's blur; saved PNGs are the generated images."""
    from PIL import Image

    k = -(-SHOW_MIN_SIDE // min(image.size))
    return image if k <= 1 else image.resize((image.width * k, image.height * k), Image.Resampling.NEAREST)


def _choices(studio) -> tuple[list[tuple[str, str]], str]:
    """(CheckboxGroup choices as (label, path relative to the folder), markdown listing the unusable files)."""
    usable, unusable = [], []
    for entry in studio.entries():
        if entry.edit and entry.usable:
            continue  # a file an edit reads (a face encoder or person file): that edit's choice, not applied
        (usable if entry.usable else unusable).append((entry.label, entry.rel))
    note = "\n".join(f"- {label}" for label, _ in unusable)
    return usable, (f"**Not usable with this model:**\n{note}" if note else "")


class Callbacks:
    """The event handlers: each calls the Studio and turns its errors into messages in the page."""

    def __init__(self, studio):
        self.studio = studio

    def _face(self, face, face_file) -> list:
        if face is None and not face_file:
            return []
        options = {"face": [] if face is None else [face], "file": face_file or ""}
        if face is not None:  # the detector is made on the first photo, then kept
            options["detector"] = self.studio.face_detector()
        return [(FACE_EDIT, options)]

    def _edits(self, suppress, suppress_mode, face, face_file, edit_name="", edit_options="") -> list:
        """The controls' edits as one description: the face, the suppressed words, then the chosen other edit."""
        pairs = self._face(face, face_file)
        words = [w.strip() for w in (suppress or "").split(",") if w.strip()]
        if words and suppress_mode != "off":
            pairs.append((SUPPRESS_EDIT, {"words": words, "suppress_mode": suppress_mode}))
        if edit_name:
            pairs.append((edit_name, self.studio.read_options(edit_options, edit_name)))
        return self.studio.edits(pairs)

    def check(self, prompt, negative_prompt, artifacts, seed, steps, guidance_scale, width, height, num_images,
              suppress, suppress_mode, compare=False, face=None, face_file="", edit_name="", edit_options=""):
        """Run before `generate` (same inputs, no outputs): a bad setting is a message, and the gallery keeps
        the last images instead of an error overlay (gradio marks the failing event's outputs)."""
        try:
            edits = self._edits(suppress, suppress_mode, face, face_file, edit_name, edit_options)
            self.studio.check(prompt, artifacts, num_images, edits, compare)
        except PersonalizeError as err:
            raise gr.Error(str(err)) from None

    def generate(self, prompt, negative_prompt, artifacts, seed, steps, guidance_scale, width, height, num_images,
                 suppress, suppress_mode, compare=False, face=None, face_file="", edit_name="", edit_options="",
                 progress=gr.Progress(track_tqdm=True)):
        """The images; with `compare`, each beside the same seed without the erasure artifacts."""
        settings = {"steps": steps, "guidance_scale": guidance_scale, "width": width, "height": height,
                    "num_images": num_images}
        try:
            settings["edits"] = self._edits(suppress, suppress_mode, face, face_file, edit_name, edit_options)
            if not compare:
                images = self.studio.generate(prompt, negative_prompt, artifacts, seed, **settings)
                return [(shown(im.image), f"seed {im.settings['seed']}") for im in images], \
                    self.studio.info(images, settings["edits"]), images
            erased, without = self.studio.compare(prompt, negative_prompt, artifacts, seed, **settings)
        except PersonalizeError as err:
            raise gr.Error(str(err)) from None
        shown_pairs = [(shown(im.image), f"seed {im.settings['seed']} · {label}")
                       for pair in zip(without, erased) for im, label in zip(pair, ("without erasure", "erased"))]
        return shown_pairs, self.studio.info(erased, settings["edits"]), erased

    def save(self, images):
        if not images:
            return "Nothing to save yet: generate first."
        return "Saved:\n" + "\n".join(f"- `{p}`" for p in self.studio.save(images))

    def preview(self, face, face_file):
        """The aligned crop the encoder will read, shown as soon as a photo is uploaded."""
        if face is None:
            return None
        try:
            return shown(self.studio.preview(self._face(face, face_file)))
        except PersonalizeError as err:
            raise gr.Error(str(err)) from None

    def export(self, artifact, fmt):
        """The chosen file exported (personalize export), offered for download, with what the command printed."""
        if not artifact:
            raise gr.Error("Choose an artifact to export.")
        try:
            files, text = self.studio.export(artifact, fmt)
        except PersonalizeError as err:
            raise gr.Error(str(err)) from None
        return [str(f) for f in files], text

    def rescan(self):
        choices, note = _choices(self.studio)
        return gr.update(choices=choices), note, gr.update(choices=[rel for _, rel in choices])

    def upload(self, file):
        if file is None:
            return gr.update(), gr.update(), gr.update(), None
        try:
            self.studio.upload(file)
        except PersonalizeError as err:
            raise gr.Error(str(err)) from None
        return *self.rescan(), None


def _prompt_column(studio) -> dict:
    examples = list(studio.pipe.profile.examples)
    c = {"prompt": gr.Textbox(label="Prompt", lines=2, elem_id="prompt", placeholder=f"e.g. {examples[0]}"),
         "negative": gr.Textbox(label="Negative prompt", lines=1)}
    gr.Examples([[e] for e in examples], [c["prompt"]], label="Try")
    choices, note = _choices(studio)
    c["artifacts"] = gr.CheckboxGroup(choices=choices, label="Artifacts (file | method | trigger words | base | date)",
                                      elem_id="artifacts")
    c["unusable"] = gr.Markdown(note)
    with gr.Row():
        c["rescan"] = gr.Button("Rescan artifacts", size="sm")
        c["upload"] = gr.File(label="Add a .safetensors artifact", file_types=[".safetensors"], file_count="single",
                              height=80)
    with gr.Accordion("Face (Face2Diffusion): put a person where the prompt says 'f l'", open=False):
        shipped = studio.pipe.profile.face_encoder is not None
        faces = [(f"the {studio.pipe.profile.name} base's shipped encoder" if shipped else "(choose an encoder)", "")]
        faces += [(f"{e.rel} | {e.shows}" + (f" | licence: {e.licence}" if e.licence else ""), e.rel)
                  for e in studio.edit_files(FACE_EDIT)]  # converted official weights: CC BY-NC-SA, non-commercial
        with gr.Row():
            aligned = studio.face_detector_spec == "none"  # photos taken as they are: aligned crops
            c["face"] = gr.Image(type="pil", label="Face photo" + (" (an aligned square crop)" if aligned else ""),
                                 elem_id="face",
                                 image_mode="RGB", sources=["upload", "clipboard"], height=160)
            c["face_crop"] = gr.Image(label="What the encoder reads", interactive=False, height=160,
                                      elem_id="face_crop")
        c["face_file"] = gr.Dropdown(faces, value="", label="Encoder or person file (a person file needs no photo)")
    with gr.Accordion("Suppress (SuppressEOT): leave words of the prompt out of the image", open=False):
        c["suppress"] = gr.Textbox(label="Words or spans to suppress (comma-separated)", elem_id="suppress")
        c["suppress_mode"] = gr.Radio(SUPPRESS_MODES, value="swr", label="Mode (swr+ito: slower, stronger)")
    with gr.Accordion("Other edit: any inference method of the registry, its options as YAML", open=False):
        with gr.Row():
            c["edit_name"] = gr.Dropdown([("(none)", "")] + [(n, n) for n in studio.edit_names()], value="",
                                         label="Edit", elem_id="edit_name")
            c["edit_options"] = gr.Textbox("", label="Options (YAML, e.g. words: [glasses])", lines=2,
                                           elem_id="edit_options")
    with gr.Accordion("Export: a file for AUTOMATIC1111, ComfyUI, kohya or diffusers", open=False):
        with gr.Row():
            c["export_file"] = gr.Dropdown([rel for _, rel in choices], label="Artifact", elem_id="export_file")
            c["export_format"] = gr.Radio(["lora", "checkpoint", "embedding"], value="lora", label="Format")
        c["export_run"] = gr.Button("Export", size="sm", elem_id="export")
        c["export_out"] = gr.File(label="Exported files", file_count="multiple", interactive=False)
        c["export_info"] = gr.Textbox(label="What was written", lines=3, interactive=False, elem_id="export_info")
    return c


def _settings_column(studio) -> dict:
    size, c = studio.pipe.native_size, {}
    with gr.Row():
        c["seed"] = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
        c["num_images"] = gr.Slider(1, 8, value=2, step=1, label="Images")
    with gr.Row():
        c["steps"] = gr.Slider(1, 100, value=25, step=1, label="Steps")
        c["guidance"] = gr.Slider(1, 20, value=studio.pipe.profile.guidance_scale, step=0.5, label="Guidance scale")
    with gr.Row():
        c["width"] = gr.Slider(size // 4, size * 2, value=size, step=8, label="Width")
        c["height"] = gr.Slider(size // 4, size * 2, value=size, step=8, label="Height")
    c["compare"] = gr.Checkbox(False, label="Compare: each image beside the same seed without the erasure artifacts",
                               elem_id="compare")
    c["run"] = gr.Button("Generate", variant="primary", elem_id="generate")
    return c


def build(studio, title: str = "personalize") -> gr.Blocks:
    """The whole app as a gr.Blocks (not launched)."""
    on = Callbacks(studio)
    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"## {title}\nBase model: `{studio.pipe.base}`. Artifacts from `{studio.artifacts_dir}`, "
                    f"saved images to `{studio.outputs_dir}`.")
        last = gr.State([])  # the GeneratedImage list of this session's last run
        with gr.Row():
            with gr.Column(scale=3):
                c = _prompt_column(studio)
            with gr.Column(scale=2):
                c |= _settings_column(studio)
        gallery = gr.Gallery(label="Images", columns=4, format="png", elem_id="gallery")
        info = gr.Textbox(label="Used settings", lines=2, interactive=False, elem_id="info")
        with gr.Row():
            save = gr.Button("Save to outputs", elem_id="save")
            saved = gr.Markdown()
        inputs = [c[k] for k in ("prompt", "negative", "artifacts", "seed", "steps", "guidance", "width", "height",
                                 "num_images", "suppress", "suppress_mode", "compare", "face", "face_file",
                                 "edit_name", "edit_options")]
        checked = c["run"].click(on.check, inputs, None, api_visibility="private", show_progress="hidden",
                                 concurrency_limit=1, concurrency_id="model")
        checked.success(on.generate, inputs, [gallery, info, last], api_name="generate", concurrency_limit=1,
                        concurrency_id="model")
        save.click(on.save, [last], [saved], api_name="save")
        c["rescan"].click(on.rescan, None, [c["artifacts"], c["unusable"], c["export_file"]], api_name="rescan")
        c["export_run"].click(on.export, [c["export_file"], c["export_format"]], [c["export_out"], c["export_info"]],
                              api_name="export", concurrency_limit=1, concurrency_id="model")
        c["face"].upload(on.preview, [c["face"], c["face_file"]], [c["face_crop"]], api_name="face_preview")
        c["upload"].upload(on.upload, [c["upload"]], [c["artifacts"], c["unusable"], c["export_file"], c["upload"]],
                           api_name="upload")
    return demo
