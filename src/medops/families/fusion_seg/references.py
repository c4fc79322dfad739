"""What paper 000 reports, so each table shows the paper's number beside ours,
and the claims each paper makes, to be tested on our data. Never used to tune anything."""

from __future__ import annotations

# paper 000, Tables 6/9 (modalities) and 7/11 (fusion): DSC, IoU, sensitivity, specificity in %
PAPER_000 = {
    "modalities": {
        "us": (78.4, 65.9, 80.2, 92.1), "mg": (81.7, 69.8, 83.5, 93.4), "mri": (85.9, 75.1, 88.4, 94.6),
        "us_mg": (87.2, 77.3, 89.6, 95.1), "mg_mri": (89.4, 80.2, 91.3, 95.9), "us_mg_mri": (92.8, 86.7, 94.5, 97.2),
    },
    "fusion": {
        "early": (86.3, 74.2, 87.4, 94.3), "late": (88.1, 76.4, 90.1, 95.0),
        "concat": (90.2, 78.9, 91.2, 95.5), "attention": (92.8, 86.7, 94.5, 97.2),
    },
    "arch": {},
    # Table 8/10: epoch -> (training loss, validation loss), 100 epochs
    "loss": {20: (0.412, 0.436), 40: (0.291, 0.315), 60: (0.198, 0.221), 80: (0.143, 0.168), 100: (0.096, 0.112)},
}

TABLE_TITLES = {
    "modalities": "Uni- vs bi- vs tri-modal (paper 000, Tables 6/9)",
    "fusion": "Fusion strategy (paper 000, Tables 7/11)",
    "arch": "Architecture baselines on the tri-modal stack (review 001)",
}

# (claim, factor, better level, worse level); "best_of:a,b" = the best of those levels by mean DSC
CLAIMS_000 = [
    ("tri-modal > best bimodal", "modalities", "us_mg_mri", "best_of:us_mg,mg_mri,us_mri"),
    ("tri-modal > best unimodal", "modalities", "us_mg_mri", "best_of:us,mg,mri"),
    ("MRI > mammography (unimodal)", "modalities", "mri", "mg"),
    ("mammography > ultrasound (unimodal)", "modalities", "mg", "us"),
    ("attention > plain feature fusion", "fusion", "attention", "concat"),
    ("feature fusion > late fusion", "fusion", "concat", "late"),
    ("late fusion > early fusion", "fusion", "late", "early"),
    ("attention fusion net > U-Net on stacked input", "arch", "fusion_seg", "unet"),
    ("attention fusion net > Attention U-Net on stacked input", "arch", "fusion_seg", "attention_unet"),
]
