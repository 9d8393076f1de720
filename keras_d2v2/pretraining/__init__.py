"""The pre-training step, in rooms: `data2vec2` (student, teacher targets, loss), `mto` (masked token
optimization), `ema` (the teacher's weights and schedule), `training` (what `fit()` adds) and
`preset_io` (building from presets, preset directories). See docs/architecture.md."""
