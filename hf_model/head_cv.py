"""Cross-validation of the head on cached backbone features: what studies, tuning and label suggestions repeat.

``train.py --cv_folds k`` trains, tests and saves a whole run per fold. A study scores dozens of settings
of the head-alone recipe (the default for few photos per class), so here the folds' data is loaded once,
the backbone is set up once per backbone and image size, its features come from the feature cache
training uses, and each setting only fits the head, as ``train.py`` fits it
(:func:`hf_model.training.train_head`, temperature scaling, the refit of a ``Trainer`` head on the
fold's validation photos): the same test figures as ``train.py --cv_folds k``, in seconds, with no model
folder written.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict, concatenate_datasets
from torch.utils.flop_counter import FlopCounterMode
from transformers import TrainingArguments, set_seed

from hf_model.adapters import adapter_for
from hf_model.backbones import default_cache_dir
from hf_model.config import TrainConfig
from hf_model.data import load_data, training_photos
from hf_model.features import extract_features, photo_digests
from hf_model.metrics import softmax, split_metrics
from hf_model.temperature import expected_calibration_error, fold_temperature
from hf_model.training import (
    Chosen,
    calibrate,
    cross_entropy_loss,
    fits_on_validation,
    loss_class_weights,
    refit_data,
    setup_model,
    train_head,
    unscaled,
)
from hf_model.transforms import test_time_views

logger = logging.getLogger("hf_model")


def load_folds(cfg: TrainConfig, seed: int, n_folds: int) -> list[DatasetDict]:
    """Fold ``i`` of ``n_folds``: the splits ``train.py --cv_folds n_folds`` trains fold ``i`` on (its test split
    is the fold). Every labeled photo is in exactly one fold's test split."""
    return [load_data(cfg, seed, (fold, n_folds)) for fold in range(n_folds)]


def labeled_photos(data: DatasetDict) -> Dataset:
    """Every hand-labeled photo of one fold's splits (train + validation + test)."""
    return concatenate_datasets([data["train"], data["validation"], data["test"]])


@dataclass
class FoldArrays:
    """One fold as cached features: the photos a head may learn from (train + validation) and the fold's test photos.

    ``fit_x`` is (photos, views, dim), ``test_x`` (photos, dim) the plain view; labels are class indices and
    ``fit_groups`` the photos' SHA-1s (one group per photo, for grouped inner folds).
    """

    fit_x: np.ndarray
    fit_y: np.ndarray
    fit_groups: list[str]
    test_x: np.ndarray
    test_y: np.ndarray


class HeadCrossValidation:
    """One backbone at one image size (from ``cfg``), set up once; :meth:`score` cross-validates a head setting.

    ``folds`` are :func:`load_folds`'s. Features of every labeled photo are computed once into the feature
    cache (or read from it); ``cfg`` may change anything but the backbone, image size, augmentation and
    feature views from one :meth:`score` to the next.
    """

    def __init__(self, cfg: TrainConfig, args: TrainingArguments, folds: list[DatasetDict]):
        self.cfg, self.args, self.folds = cfg, args, folds
        self.label_names = folds[0]["train"].features["label"].names
        set_seed(args.seed)
        self.setup = setup_model(cfg, self.label_names)
        self.setup.model.to(args.device)
        self.classifier = adapter_for(self.setup.model).classifier(self.setup.model)
        self.fresh_head = copy.deepcopy(self.classifier.state_dict())
        started = time.time()
        photos = labeled_photos(folds[0])
        self.cache = Path(cfg.cache_dir or default_cache_dir()) / "features" / self.setup.feature_key
        views = [self.setup.eval_transform] + [self.setup.train_transform] * (cfg.feature_views - 1)
        folder = f"views{cfg.feature_views}" if cfg.feature_views > 1 else "eval"
        self.features = dict(zip(photo_digests(photos), extract_features(
            self.setup.model, photos, views, self.cache / folder, desc=f"features of {cfg.backbone}")))
        self.feature_seconds = time.time() - started

    def arrays(self, data: DatasetDict, views: int | None = None) -> FoldArrays:
        """One fold's features as arrays (:class:`FoldArrays`), the first ``views`` views (default: all cached)."""
        fit = concatenate_datasets([data["train"], data["validation"]])
        fit_groups = photo_digests(fit)
        return FoldArrays(np.stack([self.features[d][:views] for d in fit_groups]), np.asarray(fit["label"]),
                          fit_groups, np.stack([self.features[d][0] for d in photo_digests(data["test"])]),
                          np.asarray(data["test"]["label"]))

    def score(self, cfg: TrainConfig | None = None, folds: list[DatasetDict] | None = None,
              args: TrainingArguments | None = None) -> list[dict]:
        """Each fold's ``test_*`` metrics (a ``--cv_folds`` run's ``all_results.json``) for the head setting ``cfg``.

        ``folds`` replaces the folds given at construction (some of them, or subsets of their photos: a learning
        curve's); ``args`` the ``TrainingArguments`` (a search's weight decay or label smoothing; same seed).

        Raises ``ValueError`` when ``cfg`` fine-tunes blocks (``--unfreeze_top_blocks`` other than 0): that needs
        whole training runs (``train.py --cv_folds``), not cached features.
        """
        cfg = cfg or self.cfg
        if cfg.unfreeze_top_blocks not in (0, None):
            raise ValueError(f"--unfreeze_top_blocks {cfg.unfreeze_top_blocks} fine-tunes blocks on images: "
                             "cross-validate it with train.py --cv_folds, not on cached features")
        cfg = dataclasses.replace(cfg, unfreeze_top_blocks=0)
        return [self._score_fold(cfg, args or self.args, data) for data in (folds or self.folds)]

    def _score_fold(self, cfg: TrainConfig, args: TrainingArguments, data: DatasetDict) -> dict:
        """``train.train`` of one fold with the head-alone recipe, minus the model folder (and its log lines)."""
        level = logger.level
        logger.setLevel(max(level, logging.WARNING))  # a study prints one line per cell, not train.py's per fold
        try:  # nor the sgd head's Trainer lines, one per epoch
            with contextlib.redirect_stdout(io.StringIO()):
                return self._fit_and_test(cfg, args, data)
        finally:
            logger.setLevel(level)

    def _fit_and_test(self, cfg: TrainConfig, args: TrainingArguments, data: DatasetDict) -> dict:
        set_seed(args.seed)
        self.classifier.load_state_dict(self.fresh_head)  # a head carried over from the last fold has seen this test
        with tempfile.TemporaryDirectory(prefix="head-cv-") as scratch:  # the sgd head's Trainer checkpoints
            smoothing = args.label_smoothing_factor  # in our loss, not the Trainer's smoother (as train.py)
            args = dataclasses.replace(args, output_dir=scratch, label_smoothing_factor=0.0, disable_tqdm=True)
            photos = training_photos(data, cfg.oversample, args.seed)
            loss = cross_entropy_loss(loss_class_weights(cfg, photos), smoothing)
            started = time.time()
            fit = train_head(cfg, args, self.setup, photos, data["validation"], loss,
                             fit_validation=fits_on_validation(cfg))
            chosen = Chosen(head_C=fit.C, head_epochs=fit.epochs)
            if cfg.temperature_scaling:
                held_out = fit.held_out or (np.log(self.test_probabilities(data["validation"])[0]),
                                            np.asarray(data["validation"]["label"]))  # as calibrate's, from the cache
                chosen.temperature, _ = calibrate(self.setup.model, self.setup.eval_transform, data["validation"],
                                                  held_out, args.per_device_eval_batch_size)
            if cfg.refit and not fits_on_validation(cfg):  # as train.py's fold: learn from validation's photos too
                refit = refit_data(data, with_test=False)
                self.classifier.load_state_dict(self.fresh_head)  # train.refit starts from a fresh model
                train_head(cfg, dataclasses.replace(args, eval_strategy="no", save_strategy="no",
                                                    load_best_model_at_end=False), self.setup,
                           training_photos(refit, cfg.oversample, args.seed), None, loss, fixed=chosen)
                if cfg.temperature_scaling:
                    fold_temperature(self.classifier, chosen.temperature)
            seconds = time.time() - started
        probs = self.test_probabilities(data["test"], cfg.tta)
        metrics = split_metrics(probs, data["test"]["label"], self.label_names)
        metrics["test_ece_unscaled"] = expected_calibration_error(unscaled(probs.mean(axis=0), chosen.temperature),
                                                                  np.asarray(data["test"]["label"]))
        return metrics | {"test_fit_seconds": seconds}

    @torch.no_grad()
    def test_probabilities(self, test: Dataset, tta: bool = False) -> np.ndarray:
        """(views, photos, classes) probabilities of the head now in the model, on cached features of ``test`` photos.

        The plain view, and with ``tta`` the mirror image (its features cached beside the others).
        """
        features = [np.stack([self.features[d][0] for d in photo_digests(test)])]
        if tta:
            features.append(self.mirrored_features(test))
        weight = self.classifier.weight.detach().float().cpu().numpy()
        bias = self.classifier.bias.detach().float().cpu().numpy()
        return np.stack([softmax(x @ weight.T + bias) for x in features])

    def mirrored_features(self, photos: Dataset) -> np.ndarray:
        """(photos, dim) features of the mirror images of ``photos`` (test-time flip), cached beside the others."""
        mirror = test_time_views(True)[1]
        return extract_features(self.setup.model, photos, [lambda image: self.setup.eval_transform(mirror(image))],
                                self.cache / "eval-mirrored", desc="mirrored features")[:, 0]

    def milliseconds_per_photo(self, n: int = 20) -> float:
        """Median forward time (ms) of one preprocessed photo at batch 1, decoding excluded: the inference cost
        on this machine (other busy processes inflate it; :meth:`gigaflops_per_photo` does not depend on them)."""
        model = self.setup.model.eval()
        pixels = self._pixels(n)
        times = []
        with torch.inference_mode():
            for batch in pixels[:3]:  # warm-up: the first calls at a new input size choose their kernels
                model(pixel_values=batch)
            for batch in pixels:
                started = time.perf_counter()
                model(pixel_values=batch)
                times.append(time.perf_counter() - started)
        return 1000 * float(np.median(times))

    def gigaflops_per_photo(self) -> float:
        """Floating-point operations (billions) of one photo's forward pass, counted by PyTorch's
        ``FlopCounterMode``: the inference cost independent of the machine and its load."""
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            self.setup.model.eval()(pixel_values=self._pixels(1)[0])
        return counter.get_total_flops() / 1e9

    def _pixels(self, n: int) -> list[torch.Tensor]:
        """The first ``n`` labeled photos preprocessed, one (1, 3, H, W) batch each, on the model's device."""
        photos = labeled_photos(self.folds[0])
        images = photos.select(range(min(n, len(photos))))["image"]
        return [self.setup.eval_transform(image)[None].to(self.args.device).contiguous(
            memory_format=torch.channels_last) for image in images]
