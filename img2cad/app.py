"""``img2cad serve``: the web app (Gradio Blocks), on localhost unless ``--host`` says otherwise.

Upload or drop a picture, or click one of the ten GenCAD-Code reference images; the app shows the
input beside our render of the predicted program, the solid in 3D (GLB), the program in a code
box with a copy button, STEP and STL downloads and the candidates with their scores and sources.
A "Thorough" box, when the engine has a thorough config, decodes with it (slower). An unusable
upload gets one message in the page. Every request uses one ``img2cad.engine.Engine``, one at a
time.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls from the app

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from img2cad.engine import Engine, Prediction  # noqa: E402
from img2cad.images import InputError, normalise, open_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("GENCAD_REFERENCE", ROOT.parent / "shared" / "gencad_reference"))
TABLE_HEADERS = ["#", "chosen", "source", "status", "log-prob / token", "silhouette IoU", "score"]


def reference_images() -> list[str]:
    """The reference images to offer as examples (none when the folder is absent)."""
    return [str(p) for p in sorted((REFERENCE / "images").glob("*.png"))]


def candidates_table(pred: Prediction) -> list[list]:
    rows = []
    for i, c in enumerate(pred.candidates):
        per_token = c.logprob / max(c.tokens, 1)
        rows.append([i + 1, "yes" if c is pred.chosen else "", c.source, c.result.status if c.result else "not executed",
                     round(per_token, 3) if np.isfinite(per_token) else None, round(c.scores["silhouette"], 3) if "silhouette" in c.scores else None,
                     round(c.total, 3) if np.isfinite(c.total) else None])
    return rows


def glb_bytes(stl: bytes) -> bytes:
    """The sandbox's STL as GLB for the 3D view (parsed as data, never executed)."""
    import trimesh

    mesh = trimesh.load(io.BytesIO(stl), file_type="stl")
    mesh.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))  # CAD z-up to glTF y-up
    mesh.visual.face_colors = [141, 141, 138, 255]
    return mesh.export(file_type="glb")


def _message(exc: InputError, path: str) -> str:
    return str(exc).replace(str(path), Path(path).name)


def handler(engine: Engine):
    """The prediction function the page calls: file path in, every output out."""

    def run(path: str | None, thorough: bool = False, progress=gr.Progress()):
        if not path:
            raise gr.Error("Upload a picture of a part first (PNG or JPEG), or click one of the examples.")
        progress(0.05, desc="reading the image")
        try:
            image = normalise(open_image(path), Path(path).name)
        except InputError as exc:
            raise gr.Error(_message(exc, path)) from None
        progress(0.15, desc="decoding and checking candidates in the sandbox")
        pred = engine.predict(image, thorough=bool(thorough) and engine.thorough is not None)
        progress(0.9, desc="exporting")
        out = Path(tempfile.mkdtemp(prefix="img2cad-"))
        name = Path(path).stem or "part"
        (out / f"{name}.py").write_text(pred.chosen.code)
        compare = out / f"{name}.compare.png"
        pred.compare_image().save(compare)
        step = stl = glb = None
        if "step" in pred.result.exports:
            step = out / f"{name}.step"
            step.write_bytes(pred.result.exports["step"])
        if "stl" in pred.result.exports:
            stl = out / f"{name}.stl"
            stl.write_bytes(pred.result.exports["stl"])
            glb = out / f"{name}.glb"
            glb.write_bytes(glb_bytes(pred.result.exports["stl"]))
        iou = f"silhouette IoU {pred.iou:.3f}" if pred.iou is not None else "nothing to render"
        status = (f"**{pred.status}** · {iou} · {pred.seconds:.1f} s · chosen: {pred.chosen.source} "
                  f"(candidate {pred.candidates.index(pred.chosen) + 1} of {len(pred.candidates)})")
        if not pred.result.executable:
            gr.Warning(f"No candidate built a valid solid ({pred.status}: {pred.result.error[:120]}); the most likely program is shown.")
        return (str(compare), str(glb) if glb else None, pred.chosen.code, str(step) if step else None,
                str(stl) if stl else None, candidates_table(pred), status)

    return run


def _readable_upload(component: gr.Image) -> None:
    """An upload Pillow cannot open becomes a message in the page, not a stack trace."""
    preprocess = component.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except (OSError, ValueError, SyntaxError):
            name = getattr(payload, "orig_name", None) or "the upload"
            raise gr.Error(f"{name}: not an image; upload a PNG or JPEG picture of a part") from None

    component.preprocess = checked


def describe(cfg) -> str:
    """A decoding config in a few words, for the page."""
    if cfg is None:
        return ""
    parts = [f"{cfg.strategy} with {cfg.k_retrieval} retrieved programs"]
    if cfg.primitives:
        parts.append("primitives and prisms fit to the picture")
    elif cfg.prisms:
        parts.append("prisms read off the picture")
    if cfg.refine_evaluations:
        parts.append(f"{cfg.refine_evaluations} refinement renders")
    return ", ".join(parts)


def build_app(engine: Engine, examples: list[str] | None = None) -> gr.Blocks:
    run = handler(engine)
    with gr.Blocks(title="img2cad", analytics_enabled=False) as demo:
        gr.Markdown("# img2cad\nA picture of a mechanical part in, the CadQuery program that builds it out. "
                    f"Model `{engine.shipped.name}`, decoding `{engine.cfg.strategy}`. Best on renders in "
                    "GenCAD-Code's style (isometric, grey faces, black edges, white background); other pictures are normalised to it.")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], label="Picture of a part",
                                 elem_id="input-image")
                _readable_upload(image)
                thorough = gr.Checkbox(label=f"Thorough: {describe(engine.thorough)} (slower)", value=False,
                                       visible=engine.thorough is not None, elem_id="thorough")
                button = gr.Button("Predict", variant="primary", elem_id="predict")
            with gr.Column(scale=2):
                compare = gr.Image(label="Input | our render of the program", interactive=False, elem_id="compare")
                status = gr.Markdown(elem_id="status")
        with gr.Row():
            with gr.Column(scale=1):
                model3d = gr.Model3D(label="Solid (3D)", elem_id="solid", height=360, camera_position=(135, 55, None))
            with gr.Column(scale=1):
                code = gr.Code(language="python", label="CadQuery program", interactive=False, lines=14, elem_id="code",
                               wrap_lines=True, buttons=["copy", "download"])
        with gr.Row():
            step = gr.File(label="STEP", interactive=False, elem_id="step-file")
            stl = gr.File(label="STL", interactive=False, elem_id="stl-file")
        table = gr.Dataframe(headers=TABLE_HEADERS, label="Candidates", interactive=False, elem_id="candidates")
        outputs = [compare, model3d, code, step, stl, table, status]
        kwargs = dict(fn=run, inputs=[image, thorough], outputs=outputs, concurrency_id="predict", concurrency_limit=1)
        image.upload(**kwargs)
        button.click(**kwargs)
        if examples:  # a click fills the picture, then predicts with the box as it is
            clicked = gr.Examples(examples=[[p] for p in examples], inputs=[image], cache_examples=False,
                                  label="GenCAD-Code reference images (click one)")
            clicked.load_input_event.then(**kwargs)
    return demo


THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def serve(engine: Engine, host: str = "127.0.0.1", port: int = 7860) -> int:
    """Serve the app on ``engine`` until interrupted; the engine is closed on the way out."""
    shipped = engine.shipped
    try:
        demo = build_app(engine, reference_images())
        demo.queue(default_concurrency_limit=1)
        cfg = engine.cfg
        print(f"img2cad: serving model {shipped.name} on http://{host}:{port} ({cfg.strategy}, {cfg.k_retrieval} retrieved, "
              f"{cfg.refine_evaluations} refinement renders; Ctrl-C to stop)", flush=True)
        demo.launch(server_name=host, server_port=port, show_error=False, quiet=True, ssr_mode=False, theme=THEME,
                    footer_links=[], mcp_server=False, pwa=False, allowed_paths=[str(REFERENCE / "images")])
    except KeyboardInterrupt:
        pass
    finally:
        engine.close()
    return 0
