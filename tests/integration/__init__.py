"""Integration suite: this pack inside a real ComfyUI server (skipped unless COMFYUI_PATH is set)."""
