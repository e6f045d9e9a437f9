"""A web app over a `DALLEPipeline` (Gradio, the `[app]` extra): `dalle-core app --pipeline DIR`.

A prompt, the number of images, guidance, temperature, top-k, a seed and reranking; the gallery fills row by
row while the codes are drawn (`DALLEPipeline.stream`). Inpainting: upload or reuse a generated image, paint
over the part to redraw, press Generate. `build_app(pipe)` returns the `gr.Blocks` (launch it yourself, or
mount it in a FastAPI app); `launch(...)` is what the command runs; `gallery_updates(pipe, ...)` is what its
Generate button streams, callable without Gradio.
"""
from __future__ import annotations

from typing import Any, Iterator, List, Optional, Tuple

import torch

from .pipeline import DALLEPipeline
from .utils import optional_import

__all__ = ["build_app", "editor_mask", "gallery_updates", "launch"]

RERANK_CHOICES = ["none", "clip", "likelihood", "both"]


def _gradio() -> Any:
    return optional_import("gradio", "the web app", 'pip install "dalle-core[app]"')


def editor_mask(value: Any, image_size: int) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(image (1, C, S, S) in [0, 1], mask (1, S, S) bool) from a Gradio ImageEditor value (background plus the
    painted layers): True where anything was painted. (None, None) without a background image; the image
    alone (mask None) when nothing was painted."""
    if not isinstance(value, dict) or value.get("background") is None:
        return None, None
    from PIL import Image

    from .data.images import to_tensor

    background = Image.fromarray(value["background"]) if not isinstance(value["background"], Image.Image) \
        else value["background"]
    image = to_tensor(background.convert("RGB").resize((image_size, image_size), Image.BILINEAR), False)[None]
    painted = None
    for layer in value.get("layers") or []:
        layer = Image.fromarray(layer) if not isinstance(layer, Image.Image) else layer
        alpha = layer.convert("RGBA").getchannel("A").resize((image_size, image_size), Image.NEAREST)
        drawn = torch.frombuffer(bytearray(alpha.tobytes()), dtype=torch.uint8).view(image_size, image_size) > 0
        painted = drawn if painted is None else painted | drawn
    if painted is None or not bool(painted.any()):
        return image, None
    return image, painted[None]


def gallery_updates(pipe: DALLEPipeline, prompt: str, num_images: float, cond_scale: float, temperature: float,
                    top_k: float, seed: float, rerank: str, edit: Any) -> Iterator[List[Any]]:
    """What the Generate button streams into the gallery, from the app's inputs: the PIL images after each row of
    codes is drawn (`DALLEPipeline.stream`: rows not drawn yet blank white, or the edited image's own), the last
    being the finished images (with `rerank`, the partial ones are every candidate). A ValueError or TypeError
    (no prompt, bad settings) is shown to the user by the app."""
    if not prompt or not prompt.strip():
        raise ValueError("type a prompt first")
    options: dict = dict(num_images=int(num_images), cond_scale=float(cond_scale), temperature=float(temperature),
                         filter_thres=1.0 - float(top_k) / 100.0, seed=int(seed))
    if rerank != "none":
        options.update(rerank=rerank, candidates=4)
    image, mask = editor_mask(edit, pipe.dalle.vae.image_size)
    if image is not None and mask is not None:
        options.update(img=image.expand(int(num_images), -1, -1, -1), mask=mask)
    for _, images in pipe.stream(prompt, **options):
        yield images


def build_app(pipe: DALLEPipeline, *, title: str = "dalle-core") -> Any:
    """The Gradio Blocks app over `pipe`."""
    gr = _gradio()
    rerank_choices = RERANK_CHOICES if pipe.clip is not None else ["none", "likelihood"]

    def generate(prompt: str, num_images: float, cond_scale: float, temperature: float, top_k: float, seed: float,
                 rerank: str, edit: Any) -> Iterator[List[Any]]:
        try:
            yield from gallery_updates(pipe, prompt, num_images, cond_scale, temperature, top_k, seed, rerank, edit)
        except (ValueError, TypeError) as err:
            raise gr.Error(str(err)) from None

    with gr.Blocks(title=title) as app:
        gr.Markdown(f"# {title}\nText to image with a DALLE trained by dalle-core. To inpaint, put an image in "
                    "the editor, paint over what to redraw, and generate.")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="prompt", elem_id="prompt", placeholder="a red circle on the left")
                num_images = gr.Slider(1, 8, value=4, step=1, label="images", elem_id="num-images")
                cond_scale = gr.Slider(1.0, 8.0, value=3.0, step=0.1, label="guidance (cond_scale)")
                temperature = gr.Slider(0.0, 1.5, value=0.7, step=0.05, label="temperature")
                top_k = gr.Slider(1, 100, value=10, step=1, label="top-k (% of the codes kept)")
                seed = gr.Number(value=0, precision=0, label="seed")
                rerank = gr.Dropdown(rerank_choices, value="none", label="rerank (best of 4)")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                gallery = gr.Gallery(label="images", elem_id="gallery", columns=4, height="auto")
                edit = gr.ImageEditor(label="inpainting: an image, painted where to redraw", type="numpy",
                                      elem_id="editor")
                reuse = gr.Button("Edit the first image", elem_id="reuse")
        button.click(generate, [prompt, num_images, cond_scale, temperature, top_k, seed, rerank, edit], gallery)

        def first_image(images: Any) -> Any:
            if not images:
                raise gr.Error("generate an image first")
            first = images[0][0] if isinstance(images[0], (tuple, list)) else images[0]
            return {"background": first, "layers": [], "composite": first}

        reuse.click(first_image, gallery, edit)
    return app


def launch(pipeline_dir: str, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           block: bool = True) -> Any:
    """Load the pipeline in `pipeline_dir` (a folder or a Hub repo id) and serve the app."""
    app = build_app(DALLEPipeline.from_pretrained(pipeline_dir))
    app.queue().launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block)
    return app
