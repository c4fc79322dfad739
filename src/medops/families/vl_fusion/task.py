"""Training hooks of `vl_fusion`: the multi-task loss of paper 003.

    L = λ_CE·L_CE + λ_CL·L_CL + λ_SEQ·L_SEQ                                        (Eq. 4)

* L_CE (Eq. 1): cross-entropy of the 3-class triage head on the fused (image, prompt) tokens.
* L_CL (Eq. 2): y·D² + (1 − y)·max(0, m − D)² over image-report pairs, D the Euclidean distance of the
  pair's L2-normalised features: each image with its own report (y = 1), with its hard negative — the
  same report with one fact changed (y = 0) — and with the next image's report in the batch (y = 0).
* L_SEQ (Eq. 3): the next-word cross-entropy of the causal decoder (teacher forcing), padding ignored.

A model with no matching features (visual- or text-only, the LSTM captioner) trains without L_CL; the
learning-rate rule of Eq. 5 is the shared trainer's ``scheduler: val_loss``.

A batch is ``(image, prompt_ids, prompt_mask, report_ids, report_mask, negative_ids, negative_mask,
triage)``; ``report_ids`` is ``[BOS] … [EOS] [PAD]…``, the decoder's target and the matching text.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medops.engine import TaskModule
from medops.families.vl_fusion.text import trim_padding


def contrastive(d_pos: torch.Tensor, d_neg: torch.Tensor, margin: float) -> torch.Tensor:
    """Eq. 2 with y = 1 for ``d_pos`` pairs and y = 0 for ``d_neg`` pairs, averaged over all pairs."""
    return torch.cat([d_pos.pow(2), F.relu(margin - d_neg).pow(2)]).mean()


class VLFusionTask(TaskModule):
    def __init__(self, net, cfg, *, lambdas=(1.0, 1.0, 1.0), margin: float = 0.5, pad_id: int = 0, **_):
        super().__init__(net, cfg)
        self.l_ce, self.l_cl, self.l_seq = (float(x) for x in lambdas)
        self.margin, self.pad_id = float(margin), pad_id
        self.can_match = getattr(net, "fusion", "") in ("cross", "concat", "early")
        self.monitor = cfg.monitor
        self.monitor_mode = "min" if cfg.monitor.endswith("loss") else "max"

    def _losses(self, batch):
        img, p_ids, p_mask, r_ids, r_mask, n_ids, n_mask, tri = batch[:8]
        e_ids, e_mask = batch[8:10] if len(batch) > 8 else (r_ids, r_mask)   # the report as the encoder reads it
        # trailing padding changes no output: cut it per batch, each text to its own longest
        (r_ids, r_mask), (e_ids, e_mask), (n_ids, n_mask) = (trim_padding(*p) for p in
                                                             ((r_ids, r_mask), (e_ids, e_mask), (n_ids, n_mask)))
        net = self.net
        core = net.module if hasattr(net, "module") else net
        match = self.can_match and self.l_cl > 0
        if match:            # the image is encoded once for the three pairs and the prompt (same as net(...))
            v = core.encode_image(img)
            fused, _, _ = core.fuse(v, p_ids, p_mask)
            tri_logits, logits = core.triage_logits(fused), core.decode(fused, r_ids[:, :-1])
        else:
            tri_logits, logits = net(img, p_ids, p_mask, r_ids)
        target = r_ids[:, 1:]
        seq = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=self.pad_id)
        ce = F.cross_entropy(tri_logits.float(), tri)
        parts = {"ce": ce, "seq": seq}
        if match:
            t_r, t_n = core.encode_text(e_ids, e_mask), core.encode_text(n_ids, n_mask)   # once each
            d_pos = core.match_distance(v, e_ids, e_mask, t_r)
            d_hard = core.match_distance(v, n_ids, n_mask, t_n)
            negs = [d_hard]
            if len(img) > 1:                          # the next image's report: an easy in-batch negative
                negs.append(core.match_distance(v, e_ids.roll(1, 0), e_mask.roll(1, 0), t_r.roll(1, 0)))
            parts["cl"] = contrastive(d_pos, torch.cat(negs), self.margin)
            parts["hn_hit"] = (d_pos < d_hard).float()
        return tri_logits, logits, target, parts

    def _total(self, parts):
        total = self.l_ce * parts["ce"] + self.l_seq * parts["seq"]
        if "cl" in parts:
            total = total + self.l_cl * parts["cl"]
        return total

    def train_step(self, batch):
        return self._total(self._losses(batch)[3])

    def validation_step(self, batch):
        tri_logits, logits, target, parts = self._losses(batch)
        keep = target != self.pad_id
        n = len(target)
        out = {"n": n, "loss": float(self._total(parts)) * n, "seq": float(parts["seq"]) * n,
               "tok_right": int(((logits.argmax(-1) == target) & keep).sum()), "tok": int(keep.sum()),
               "prob": torch.softmax(tri_logits.float(), 1).cpu(), "y": batch[7].cpu()}
        if "hn_hit" in parts:
            out["hn_hit"] = parts["hn_hit"].cpu()
        return out

    def validation_epoch_end(self, outputs):
        from medops.families.vl_fusion.metrics import triage_scores

        n = sum(o["n"] for o in outputs)
        prob = torch.cat([o["prob"] for o in outputs]).numpy()
        y = torch.cat([o["y"] for o in outputs]).numpy()
        tri = triage_scores(prob, y)
        res = {"val_loss": sum(o["loss"] for o in outputs) / n, "val_seq_loss": sum(o["seq"] for o in outputs) / n,
               "val_token_accuracy": sum(o["tok_right"] for o in outputs) / max(sum(o["tok"] for o in outputs), 1),
               "val_triage_accuracy": tri["accuracy"], "val_triage_macro_f1": tri["macro_f1"]}
        if all("hn_hit" in o for o in outputs):
            res["val_hard_negative_accuracy"] = float(torch.cat([o["hn_hit"] for o in outputs]).mean())
        return res
