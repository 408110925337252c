"""Loads run directories the way a user without transferkit would, from the model card's own code.

Run as ``python outside_loader.py JOB.json`` in a fresh process (tests/test_interop.py): for
each run it executes the card's timm, PyTorch and transformers snippets on every image and
prints the logits, probabilities and labels they give as JSON. transferkit cannot be imported
here: the point is that nothing of it is needed.
"""
import json
import re
import sys
from pathlib import Path

sys.modules["transferkit"] = None  # any `import transferkit` now fails

import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(1)


def snippets(card: str) -> dict:
    """``{"timm": code, ...}``: each python block of the card under its bold heading."""
    found = {}
    for heading, code in re.findall(r"^\*\*([^*\n]+)\*\*[^\n]*\n\n```python\n(.*?)```", card, flags=re.S | re.M):
        found[heading.strip()] = code
    return found


def run_snippet(code: str, run_dir: str, images: list) -> dict:
    """Execute a card snippet as written, once per image (RUN_DIR and photo.jpg filled in): the
    probabilities are the ones the snippet itself computes (its ``probs``, its temperature), the
    logits those of its ``model`` on its ``x``."""
    logits, probs = [], []
    for path in images:
        scope = {}
        exec(code.replace("RUN_DIR", run_dir).replace("photo.jpg", path), scope)
        with torch.no_grad():
            logits.append(scope["model"](scope["x"])[0].tolist())
        probs.append(scope["probs"][0].tolist())
    return {"logits": logits, "probs": probs}


def transformers_outputs(code: str, run_dir: str, images: list) -> dict:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(run_dir).eval()
    processor = AutoImageProcessor.from_pretrained(run_dir)
    with torch.no_grad():
        logits = model(**processor([Image.open(p).convert("RGB") for p in images], return_tensors="pt")).logits
    scope = {}
    exec(code.replace("RUN_DIR", run_dir).replace("photo.jpg", images[0]), scope)  # the card's pipeline
    top = [scope["classify"](p)[0]["label"] for p in images]
    return {"logits": logits.tolist(), "id2label": [model.config.id2label[i] for i in range(len(model.config.id2label))],
            "pipeline_top1": top}


def main(job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    out = {}
    for run_dir in job["runs"]:
        blocks = snippets((Path(run_dir) / "README.md").read_text())
        result = {"blocks": sorted(blocks)}
        for heading, code in blocks.items():
            if heading.startswith("transformers"):
                result["transformers"] = transformers_outputs(code, run_dir, job["images"])
            elif heading != "transferkit":
                result[heading] = run_snippet(code, run_dir, job["images"])
        out[run_dir] = result
    out["transferkit_imported"] = any(m == "transferkit" or m.startswith("transferkit.")
                                      for m, v in sys.modules.items() if v is not None)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
