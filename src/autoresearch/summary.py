"""The `---` summary block at the end of every run: a contract that tools grep."""
from __future__ import annotations

# key, format; the order matches the original's block, our additions follow it
FIELDS = (
    ("val_bpb", "{:.6f}"),
    ("training_seconds", "{:.1f}"),
    ("total_seconds", "{:.1f}"),
    ("peak_vram_mb", "{:.1f}"),
    ("mfu_percent", "{:.2f}"),
    ("total_tokens_M", "{:.1f}"),
    ("num_steps", "{:d}"),
    ("num_params_M", "{:.1f}"),
    ("depth", "{:d}"),
    ("trust", "{}"),
    ("eval_seconds", "{:.1f}"),
    ("profile", "{}"),
    ("seed", "{:d}"),
)
WIDTH = 18  # "training_seconds: " is the widest key


def format_summary(values: dict) -> str:
    lines = ["---"]
    for key, fmt in FIELDS:
        value = values.get(key)
        if value is None:
            continue
        try:
            text = fmt.format(value)
        except (ValueError, TypeError):
            text = str(value)
        lines.append(f"{key + ':':<{WIDTH}}{text}")
    for key in ("status", "reason"):
        if values.get(key):
            lines.append(f"{key + ':':<{WIDTH}}{values[key]}")
    return "\n".join(lines)


def parse_summary(text: str) -> dict:
    """Reads the LAST block in `text`; numbers become floats, the rest stays text."""
    start = text.rfind("\n---\n")
    block = text[start + 5:] if start >= 0 else (text[4:] if text.startswith("---\n") else "")
    values = {}
    for line in block.splitlines():
        key, sep, rest = line.partition(":")
        if not sep or " " in key:
            continue
        rest = rest.strip()
        try:
            values[key] = float(rest)
        except ValueError:
            values[key] = rest
    return values
