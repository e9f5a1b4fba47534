"""Fundus Studio web app (placeholder until the app issue): shows the label taxonomy.

Run with ``make run`` or ``python app.py [--host 127.0.0.1] [--port 7860] [--checkpoints DIR]``.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gradio as gr  # noqa: E402

from fundus_studio import labels  # noqa: E402


def taxonomy_markdown() -> str:
    rows = [
        f"| {c.index} | {c.name} | {c.short} | `rgb{c.color}` |" for c in labels.CLASSES
    ]
    return "\n".join(["| index | class | short | colour |", "|---|---|---|---|", *rows])


with gr.Blocks(title="Fundus Studio") as demo:
    gr.Markdown("# Fundus Studio\nThe painting, gallery and export tabs arrive with the models.")
    gr.Markdown(taxonomy_markdown())


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Start the Fundus Studio web app.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: localhost only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--checkpoints", default="checkpoints", help="folder of model checkpoints")
    p.add_argument("--auth", default=None, help="USER:PASS to require a login")
    return p.parse_args()


if __name__ == "__main__":
    args = parse_args()
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    demo.launch(server_name=args.host, server_port=args.port, auth=auth)
