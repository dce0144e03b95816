"""A cheap retrieval probe during training, for early-stopping schedulers (ASHA).

It scores the student on the first `train.probe_images` images of the probe-test split, in-process
on rank 0, and reports under the final evaluation's keys (eval/<dataset>/i2t_r1, t2i_r1), so that a
search objective such as eval/scenes/i2t_r1 can be read at every probe step. On a few dozen images
the numbers are noisier than the final evaluation's, which scores the whole split.
"""

import torch

from tipslab.jobs.config import experiment
from tipslab.jobs.eval.evalsets.scenes import read_split
from tipslab.jobs.eval.evaluate import retrieval_token
from tipslab.jobs.eval.probes.features import load_pixels
from tipslab.jobs.eval.probes.retrieval import recall_at_k
from tipslab.models.errors import ConfigError


class RetrievalProbe:
    def __init__(self, exp, tokenizer):
        exp = experiment(exp)
        ev = exp.eval
        size = exp.model.image_size
        split, _ = read_split(exp.data.root, ev.probe_test_split, size, ev.retrieval_caption)
        n = min(exp.train.probe_images, len(split.keys))
        if split.captions is None:
            raise ConfigError(
                f"train.probe_every: the {ev.probe_test_split} split has no {ev.retrieval_caption!r} "
                "column to probe retrieval with; set train.probe_every: 0"
            )
        self.pixels = torch.stack([load_pixels(split.images[i], size, split.keys[i]) for i in range(n)])
        self.tokens = torch.from_numpy(tokenizer.encode(split.captions[:n]))
        self.token = retrieval_token(exp)
        self.prefix = f"eval/{ev.dataset}"

    @torch.no_grad()
    def __call__(self, student, device: torch.device) -> dict[str, float]:
        was_training = student.training
        student.eval()
        image = student.vision(self.pixels.to(device))[self.token]
        text = student.encode_text(self.tokens.to(device))
        student.train(was_training)
        recall = recall_at_k(image.cpu(), text.cpu(), torch.arange(len(image)), ks=(1,))
        return {f"{self.prefix}/{k}": v for k, v in recall.items()}
