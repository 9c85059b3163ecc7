"""The code a model card shows for using the model in the tools people already have.

One snippet per client: transformers' ``pipeline()``, the model and image processor of plain transformers, timm
(timm_wrapper models: their weights are timm's own), and ONNX Runtime (when the folder holds ``model.onnx``). A
card written at training time points them at the local folder; :func:`point_at_repo` points them at the Hub repo
when the model is published. ``tests/test_interop.py`` runs every snippet, as rendered, on a tiny model folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

BEGIN, END = "<!-- usage: written by hf_model.snippets -->", "<!-- /usage -->"
PHOTO = "photo.jpg"

PIPELINE = Template('''\
from transformers import pipeline

classifier = pipeline("image-classification", model="$model")
print(classifier("$photo", top_k=$top_k))''')

TRANSFORMERS = Template('''\
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

processor = AutoImageProcessor.from_pretrained("$model")
model = AutoModelForImageClassification.from_pretrained("$model").eval()
inputs = processor(Image.open("$photo").convert("RGB"), return_tensors="pt")
with torch.no_grad():
    probs = model(**inputs).logits.softmax(-1)[0]
print({model.config.id2label[i]: round(float(p), 3) for i, p in enumerate(probs)})''')

TIMM = Template('''\
import timm
import torch
from PIL import Image

model = timm.create_model("$timm_source", pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
with torch.no_grad():
    probs = model(transform(Image.open("$photo").convert("RGB")).unsqueeze(0)).softmax(-1)[0]
print(dict(zip(model.pretrained_cfg["label_names"], probs.tolist())))''')

ONNX = Template('''\
import numpy as np
import onnxruntime
${hub_import}from PIL import Image
from transformers import AutoConfig, AutoImageProcessor

onnx_file = $onnx_file
processor = AutoImageProcessor.from_pretrained("$model")
labels = AutoConfig.from_pretrained("$model").id2label
session = onnxruntime.InferenceSession(onnx_file)
pixels = processor(Image.open("$photo").convert("RGB"), return_tensors="pt")["pixel_values"].numpy()
(logits,) = session.run(["logits"], {"pixel_values": pixels})
probs = np.exp(logits[0] - logits[0].max())
print({labels[i]: round(float(p), 3) for i, p in enumerate(probs / probs.sum())})''')


FINE_TUNE = Template('''\
from transformers import AutoConfig, AutoModelForImageClassification

names = ["cat", "dog", "fox"]  # your classes
config = AutoConfig.from_pretrained("$model", num_labels=len(names), id2label=dict(enumerate(names)),
                                    label2id={name: i for i, name in enumerate(names)})
model = AutoModelForImageClassification.from_pretrained("$model", config=config, ignore_mismatched_sizes=True)
# train it (Trainer), then model.save_pretrained("my-model"): pipeline() names the new classes''')
# note: from_pretrained re-initializes only weights whose shape changed, so a head of the same size is kept
FINE_TUNE_NOTE = ("The standard transformers recipe: a new head for your classes (transformers' notice that "
                  "`num_labels` is incompatible with the saved `id2label`, and the classifier listed as `MISMATCH`, "
                  "say just that). "
                  "With as many classes as this model has, the sizes match and its trained head is kept as the "
                  "starting point instead.")
TIMM_NOTICE = ("Loading it with transformers prints `Requested torchvision backend is not available. Falling back "
               "to pil backend.` once: transformers' notice that timm models come with a PIL image processor only. "
               "It is harmless: that processor is the one the model was trained and tested with.")


def snippets(model: str, *, on_hub: bool, top_k: int, timm: bool, onnx: bool) -> dict[str, str]:
    """``{client: python code}`` for the model ``model`` (a Hub repo id when ``on_hub``, else a local folder).

    ``timm``: the model is a timm model behind ``timm_wrapper`` (timm loads its weights as they are);
    ``onnx``: the folder holds ``model.onnx`` (``hf-model export``). Every snippet labels :data:`PHOTO`.
    """
    common = {"model": model, "photo": PHOTO, "top_k": top_k}
    out = {"pipeline()": PIPELINE.substitute(common), "transformers": TRANSFORMERS.substitute(common)}
    if timm:
        out["timm"] = TIMM.substitute(common, timm_source=f"hf-hub:{model}" if on_hub else f"local-dir:{model}")
    if onnx:
        out["ONNX Runtime"] = ONNX.substitute(
            common, hub_import="from huggingface_hub import hf_hub_download\n" if on_hub else "",
            onnx_file=f'hf_hub_download("{model}", "model.onnx")' if on_hub else f'"{Path(model) / "model.onnx"}"')
    return out


def usage_section(model: str, *, on_hub: bool, top_k: int, timm: bool, onnx: bool) -> str:
    """The card's "How to use" text: each snippet under its client's name, between markers :func:`point_at_repo`
    finds again."""
    blocks = [f"With {client}:\n\n```python\n{code}\n```"
              for client, code in snippets(model, on_hub=on_hub, top_k=top_k, timm=timm, onnx=onnx).items()]
    if timm:
        blocks.append(TIMM_NOTICE)
    blocks.append(f"### Fine-tune on your own classes\n\n{FINE_TUNE_NOTE}\n\n```python\n"
                  f"{FINE_TUNE.substitute(model=model)}\n```\n\nOr with this toolkit, which starts new classes on a "
                  f"fresh head whatever their number: `hf-model train --backbone {model} --data_dir my_photos "
                  "--output_dir runs/mine`.")
    return "\n".join([BEGIN, "\n\n".join(blocks), END])


def point_at_repo(card_text: str, repo_id: str, *, top_k: int, timm: bool, onnx: bool) -> str | None:
    """``card_text`` with its usage section written for ``repo_id`` on the Hub; ``None`` when it has no such section
    (a card written before the markers, or by hand)."""
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(card_text):
        return None
    section = usage_section(repo_id, on_hub=True, top_k=top_k, timm=timm, onnx=onnx)
    return pattern.sub(lambda _: section, card_text, count=1)
