"""Settings of the layer analysis (:class:`AnalysisSettings`) and its defaults, torch-free so that the command
line's parser can show them without importing the model code (:mod:`.analysis` re-exports them)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

DEFAULT_STYLE_PROMPT = "a painting in a distinctive artistic style, with characteristic brushwork, palette and texture"
DEFAULT_CONTENT_PROMPT = "a painting"
SCORES = ("activation", "causal", "combined")
DEFAULT_SCORE = "causal"


@dataclass
class AnalysisSettings:
    style_prompt: str = DEFAULT_STYLE_PROMPT
    content_prompt: str = DEFAULT_CONTENT_PROMPT
    timesteps: tuple[int, ...] = (200, 500, 800)
    seeds: int = 2
    seed: int = 0
    size: int = 512                  # analysis resolution (images are centre-cropped to a square and resized)
    batch_size: int = 4              # images per UNet call (each call runs 2x this: style and content prompt)
    correlation_weight: float = 0.5  # lambda of the final score
    score: str = DEFAULT_SCORE       # the base B_l of the final score: "activation", "causal" or "combined"

    def check(self, host) -> "AnalysisSettings":
        ts = tuple(int(t) for t in self.timesteps)
        problems = [
            (len(ts) > 0, "no timesteps given"),
            (all(0 <= t < host.num_train_timesteps for t in ts),
             f"timesteps must lie in 0..{host.num_train_timesteps - 1}, got {list(ts)}"),
            (len(set(ts)) == len(ts), f"timesteps repeat: {list(ts)}"),
            (int(self.seeds) >= 1, f"seeds must be >= 1, got {self.seeds}"),
            (int(self.batch_size) >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (int(self.size) >= host.vae_scale_factor and int(self.size) % host.vae_scale_factor == 0,
             f"size must be a positive multiple of {host.vae_scale_factor} (use 512 for SD models), got {self.size}"),
            (bool(self.style_prompt.strip()) and bool(self.content_prompt.strip()), "empty style or content prompt"),
            (self.style_prompt.strip() != self.content_prompt.strip(),
             "the style and content prompts are identical; the style prompt must add the style description"),
            (0.0 <= float(self.correlation_weight) <= 1.0,
             f"correlation_weight must lie in [0, 1], got {self.correlation_weight}"),
            (self.score in SCORES, f"score must be one of {', '.join(SCORES)}, got {self.score!r}"),
        ]
        for ok, msg in problems:
            if not ok:
                raise ValueError(msg)
        return AnalysisSettings(**{**asdict(self), "timesteps": ts})
