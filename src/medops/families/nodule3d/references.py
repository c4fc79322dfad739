"""Paper 004 (Gou et al., ITC 2024) numbers and claims, for the report."""

# Table 3 (LIDC-IDRI, mean ± std; Acc, Recall, Precision, AUC, F1 in %). MD = MSCS-DeepLN, the multi-scale
# cost-sensitive ensemble the method section describes; ZIOA / ZIDT = the IFM's macro (OA) / micro (DT) channel.
TABLE3 = {
    "MD (multi-scale ensemble)": ((92.65, 0.26), (85.58, 0.94), (90.39, 0.94), (94.00, 0.25), (87.91, 0.43)),
    "KiU-Net": ((92.06, 0.28), (83.62, 0.51), (90.27, 1.28), (93.88, 0.17), (86.82, 0.33)),
    "DAS-Net": ((92.17, 0.23), (84.55, 0.37), (90.78, 0.21), (92.58, 0.24), (86.98, 0.12)),
    "ZI-Net OA (macro channel)": ((92.78, 0.17), (84.68, 1.23), (91.95, 0.60), (93.78, 0.23), (87.16, 0.41)),
    "ZI-Net DT (micro channel)": ((92.12, 0.23), (84.36, 1.64), (89.80, 0.75), (94.35, 0.37), (87.98, 0.54)),
    "IFM": ((93.65, 0.26), (87.58, 0.94), (90.89, 0.94), (94.00, 0.25), (88.91, 0.43)),
}
TABLE3_METRICS = ("accuracy", "recall", "precision", "auc", "f1")
# which of our cells corresponds to a paper row (by the cell's factor levels)
PAPER_ROW = {("nodule3d_ensemble", ""): "MD (multi-scale ensemble)", ("nodule3d_ifm", "macro_micro_general"): "IFM",
             ("nodule3d_ifm", "macro"): "ZI-Net OA (macro channel)", ("nodule3d_ifm", "micro"): "ZI-Net DT (micro channel)"}

IFM_NOTE = ("The paper's IFM row equals its MD row plus fixed offsets (+1.00 accuracy, +2.00 recall, +0.50 precision, "
            "+0.00 AUC, +1.00 F1) with identical standard deviations, so it is shown for context only.")
