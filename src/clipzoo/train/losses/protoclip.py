r"""ProtoCLIP: prototypical contrastive language–image pretraining.

Chen, Wu, Liu, Yang, Huang, Bao, Zhou (2022), "Prototypical Contrastive Language Image Pretraining",
arXiv:2206.10996.

ProtoCLIP adds to CLIP's instance-level InfoNCE a *prototype-level* objective. Once per episode (a chunk of the
data stream), the trainer collects the episode's L2-normalised image and text features and calls
:meth:`ProtoCLIPLoss.update_prototypes`, which runs spherical k-means (``num_prototypes`` clusters, fixed seed)
separately on the image features and on the text features (or on an external teacher's text features, the paper's
"external teacher" for grouping). *Prototypical back translation* (PBT) then builds each modality's prototypes in the
*other* modality's space — image cluster :math:`k`'s prototype is the normalised mean of the **text** features of
its members, :math:`P^{I\to T}_k`, and text cluster :math:`k`'s is the normalised mean of the **image** features,
:math:`P^{T\to I}_k` — decoupling grouping from alignment and sidestepping the modality gap.

During the episode, with :math:`a^I_i` / :math:`a^T_i` the image / text cluster of pair *i* (nearest stored
centroid, or a soft assignment when ``target_temperature`` is set), and :math:`\tau` the prototype temperature:

.. math::
    L_{proto} = \frac1{2N}\sum_i\Big[-\log\mathrm{softmax}_k\big(y_i^\top P^{I\to T}_k/\tau\big)_{a^I_i}
                                    -\log\mathrm{softmax}_k\big(x_i^\top P^{T\to I}_k/\tau\big)_{a^T_i}\Big],\qquad
    L = w_{inst}\,L_{InfoNCE} + w_{proto}\,L_{proto}

i.e. the text of a pair must identify the (back-translated) image cluster of its image, and vice versa.

Simplifications (honest): targets are assignments of the current batch to the stored centroids rather than
looked up by sample index from the episode's k-means labels (identical for features that were in the episode
and unchanged); the prototype temperature is a fixed hyper-parameter (default 0.05, our choice) rather than
learnable; the paper's "prototype-level distillation" from an external teacher is available only through grouping
(``teacher_text_features`` passed to :meth:`update_prototypes` and at forward time) — add a distillation objective
(e.g. RKD/SimReg) for feature-level teacher signal. Before the first :meth:`update_prototypes` the loss is
InfoNCE alone.

Distributed: :meth:`update_prototypes` gathers the episode features from all ranks (rank order), runs k-means with
the same seed and broadcasts the result from rank 0, so prototypes are identical everywhere; the instance term
follows :class:`~clipzoo.train.losses.infonce.InfoNCELoss`; the prototype term is per sample.

Reads: ``image_features``, ``text_features``, ``logit_scale`` (instance term), ``logit_bias`` (optional),
``teacher_text_features`` (only if prototypes were grouped with them). Components: ``instance``, ``prototype``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LossInputError, Objective, check_count, check_non_negative, check_positive
from .distributed import all_gather_no_grad, broadcast_
from .infonce import InfoNCELoss

__all__ = ["ProtoCLIPLoss", "spherical_kmeans"]


@torch.no_grad()
def spherical_kmeans(x: torch.Tensor, k: int, *, iters: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine k-means: ``(centroids (k, D), labels (N,))``. Deterministic given ``seed``; empty clusters keep
    their previous centroid."""
    x = F.normalize(x, dim=1)
    n = x.shape[0]
    if n < k:
        raise LossInputError(f"k-means needs at least num_prototypes={k} samples per episode, got {n}")
    g = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(n, generator=g)[:k].to(x.device)].clone()
    labels = torch.zeros(n, dtype=torch.long, device=x.device)
    for _ in range(iters):
        labels = (x @ centroids.T).argmax(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)
        new = F.normalize(sums, dim=1)
        centroids = torch.where((counts > 0).unsqueeze(1), new, centroids)
    labels = (x @ centroids.T).argmax(dim=1)
    return centroids, labels


def _group_means(values: torch.Tensor, labels: torch.Tensor, k: int, fallback: torch.Tensor) -> torch.Tensor:
    sums = torch.zeros(k, values.shape[1], dtype=values.dtype, device=values.device).index_add_(0, labels, values)
    counts = torch.bincount(labels, minlength=k)
    return torch.where((counts > 0).unsqueeze(1), F.normalize(sums, dim=1), fallback)


def _check_options(num_prototypes, dim, text_group_dim, proto_temperature, target_temperature, instance_weight,
                   proto_weight, kmeans_iters) -> None:
    owner = "ProtoCLIPLoss"
    check_count(owner, num_prototypes=num_prototypes, dim=dim, kmeans_iters=kmeans_iters)
    if text_group_dim is not None:
        check_count(owner, text_group_dim=text_group_dim)
    check_positive(owner, proto_temperature=proto_temperature)
    if target_temperature is not None:
        check_positive(owner, target_temperature=target_temperature)
    check_non_negative(owner, instance_weight=instance_weight, proto_weight=proto_weight)


class ProtoCLIPLoss(Objective):
    uses = ("image_features", "text_features", "logit_scale", "logit_bias", "teacher_text_features")

    def __init__(self, num_prototypes: int, dim: int, *, text_group_dim: int | None = None,
                 proto_temperature: float = 0.05, target_temperature: float | None = None,
                 instance_weight: float = 1.0, proto_weight: float = 1.0, kmeans_iters: int = 20, seed: int = 0,
                 local_loss: bool = False, gather_with_grad: bool = False):
        super().__init__()
        _check_options(num_prototypes, dim, text_group_dim, proto_temperature, target_temperature, instance_weight,
                       proto_weight, kmeans_iters)
        self.num_prototypes = num_prototypes
        self.proto_temperature, self.target_temperature = proto_temperature, target_temperature
        self.instance_weight, self.proto_weight = instance_weight, proto_weight
        self.kmeans_iters, self.seed = kmeans_iters, seed
        self.instance = InfoNCELoss(local_loss=local_loss, gather_with_grad=gather_with_grad)
        gdim = text_group_dim or dim
        self.register_buffer("image_centroids", torch.zeros(num_prototypes, dim))
        self.register_buffer("text_centroids", torch.zeros(num_prototypes, gdim))
        self.register_buffer("image_protos_in_text", torch.zeros(num_prototypes, dim))
        self.register_buffer("text_protos_in_image", torch.zeros(num_prototypes, dim))
        self.register_buffer("episode", torch.zeros((), dtype=torch.long))

    @property
    def ready(self) -> bool:
        return int(self.episode) > 0

    @torch.no_grad()
    def update_prototypes(self, image_features: torch.Tensor, text_features: torch.Tensor,
                          teacher_text_features: torch.Tensor | None = None) -> None:
        """Episode end: k-means on the (gathered) episode features and back-translated prototypes."""
        img = F.normalize(all_gather_no_grad(image_features.float()), dim=1)
        txt = F.normalize(all_gather_no_grad(text_features.float()), dim=1)
        if teacher_text_features is None:
            grp = txt
        else:
            grp = F.normalize(all_gather_no_grad(teacher_text_features.float()), dim=1)
        k, seed = self.num_prototypes, self.seed + int(self.episode)
        ci, li = spherical_kmeans(img, k, iters=self.kmeans_iters, seed=seed)
        ct, lt = spherical_kmeans(grp, k, iters=self.kmeans_iters, seed=seed + 1)
        i2t = _group_means(txt, li, k, fallback=ci)
        t2i = _group_means(img, lt, k, fallback=ci)
        for buf, val in ((self.image_centroids, ci), (self.text_centroids, ct),
                         (self.image_protos_in_text, i2t), (self.text_protos_in_image, t2i)):
            buf.copy_(val.to(buf.dtype))
            broadcast_(buf)
        self.episode.add_(1)

    def _targets(self, feats, centroids):
        sims = F.normalize(feats, dim=1) @ centroids.T.to(feats.dtype)
        if self.target_temperature is None:
            return F.one_hot(sims.argmax(dim=1), self.num_prototypes).to(feats.dtype)
        return F.softmax(sims / self.target_temperature, dim=1)

    def compute(self, image_features=None, text_features=None, logit_scale=None, logit_bias=None,
                teacher_text_features=None, **_):
        img = self._need("image_features", image_features)
        txt = self._need("text_features", text_features)
        inst = self.instance(img, txt, logit_scale=logit_scale, logit_bias=logit_bias)["loss"]
        if not self.ready:
            proto = inst.new_zeros(())
        else:
            x, y = F.normalize(img, dim=1), F.normalize(txt, dim=1)
            grp = y if teacher_text_features is None else teacher_text_features
            if grp.shape[1] != self.text_centroids.shape[1]:
                raise LossInputError("ProtoCLIP: text grouping features do not match the text centroids' width; "
                                     "pass teacher_text_features iff they were used in update_prototypes.")
            q_img = self._targets(img.detach(), self.image_centroids)
            q_txt = self._targets(grp.detach(), self.text_centroids)
            log_t = F.log_softmax(y @ self.image_protos_in_text.T.to(y.dtype) / self.proto_temperature, dim=1)
            log_i = F.log_softmax(x @ self.text_protos_in_image.T.to(x.dtype) / self.proto_temperature, dim=1)
            proto = (-(q_img * log_t).sum(1).mean() - (q_txt * log_i).sum(1).mean()) / 2
        loss = self.instance_weight * inst + self.proto_weight * proto
        return {"loss": loss, "instance": inst, "prototype": proto}
