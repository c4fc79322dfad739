"""What paper 002 (and review 001) report, so each table shows the paper's number beside ours,
and the claims the paper makes, to be tested on our data. Never used to tune anything."""

from __future__ import annotations


# paper 002, Table 1 (model performance; %, AUC-ROC as a fraction x 100): accuracy, precision, recall, F1, AUC
PAPER_002 = {
    "backbone": {"vgg16": (85.2, 84.7, 86.0, 85.3, 91.0), "resnet50": (89.5, 88.0, 90.1, 89.0, 93.0),
                 "densenet201": (92.4, 93.1, 91.8, 92.4, 96.0)},
}

TABLE_TITLES_002 = {
    "backbone": "Backbones (paper 002, Table 1; Inception-v3 from review 001)",
    "weights": "Transfer vs from scratch (paper 002 section 3.4)",
    "strategy": "Fine-tuning vs feature extraction (paper 002 section 3.4)",
    "loss": "Cross-entropy vs focal loss (paper 002 section 3.5)",
    "dataset": "Per dataset, baseline model (paper 002 section 3.1 datasets)",
}

# (claim, factor, better level, worse level): tested on test AUC with a paired bootstrap over cases
CLAIMS_002 = [
    ("DenseNet201 > ResNet50", "backbone", "densenet201", "resnet50"),
    ("ResNet50 > VGG16", "backbone", "resnet50", "vgg16"),
    ("DenseNet201 > VGG16", "backbone", "densenet201", "vgg16"),
    ("transfer (source-pretrained) > from scratch", "weights", "source", "none"),
    ("transfer (ImageNet) > from scratch", "weights", "imagenet", "none"),
    ("fine-tuning > feature extraction", "strategy", "fine_tune", "feature_extraction"),
    ("focal loss > cross-entropy", "loss", "focal", "ce"),
]
