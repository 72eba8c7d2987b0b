"""Downstream evaluation of exported XKD encoders (docs/method.md §6, paper A.5-A.6).

Library code behind the thin command-line tools in ``eval/``:

* :mod:`~xkd.evaluation.protocol`  clip geometry and linear-eval augmentation of the protocols
* :mod:`~xkd.evaluation.datasets`  labelled shard splits, label files, official split lists
* :mod:`~xkd.evaluation.clips`     evaluation clips (uniform test clips, augmented train clips)
* :mod:`~xkd.evaluation.features`  frozen features of an exported encoder, cached by checkpoint hash
* :mod:`~xkd.evaluation.svm`       linear SVM protocol (C by cross-validation on the train split)
* :mod:`~xkd.evaluation.fc`        FC-tuning on frozen features (single- and multi-label)
* :mod:`~xkd.evaluation.finetune`  full fine-tuning (layer decay, mixup/cutmix, RandAug, SpecAugment)
* :mod:`~xkd.evaluation.fusion`    audio-visual late fusion
* :mod:`~xkd.evaluation.metrics`   top-k, multi-clip averaging, average precision / mAP
* :mod:`~xkd.evaluation.results`   JSON results and MLflow child runs of the pretraining run
* :mod:`~xkd.evaluation.report`    the table of docs/method.md §7 with our numbers beside the paper's
* :mod:`~xkd.evaluation.cli`       options and steps shared by the command-line tools
* :mod:`~xkd.evaluation.errors`    ``EvalInputError``: bad input, shown by the tools as ``error: ...`` (exit 2)
"""
