"""Paper 003's numbers (COCO Caption; natural images): context beside ours, never a target — our data are
simulated radiographs and reports, so only orderings can be compared."""

# Table 1 (COCO Caption): BLEU-1, BLEU-2, CIDEr, METEOR (%, CIDEr x100)
TABLE1 = {"LSTM-Attention": (73.2, 55.4, 112.8, 27.1), "Dual-Attention": (76.5, 58.9, 123.4, 28.3),
          "M4C": (79.1, 61.2, 134.7, 30.2), "Proposed Model": (82.4, 64.7, 145.3, 32.5)}
# Table 2 (COCO Caption): top-1, top-5 matching accuracy (%)
TABLE2 = {"LSTM-Attention": (53.1, 78.4), "Dual-Attention": (58.7, 81.3), "M4C": (59.2, 83.5),
          "Proposed Model": (64.3, 87.2)}
# Table 3 (COCO Caption ablation): CIDEr x100
TABLE3 = {"Full Model": 145.3, "Remove Cross-Attention": 136.8, "Remove CBAM Module": 140.0,
          "Visual Features Only": 121.4, "Text Features Only": 118.9}

# ablation levels -> the paper's row (Tables 1-3)
ROW_OF = {("vl_fusion", "cross", True): "Proposed Model", ("vl_lstm_attention", "cross", True): "LSTM-Attention",
          ("vl_fusion", "early", True): "M4C"}
TABLE3_ROW = {("cross", True): "Full Model", ("concat", True): "Remove Cross-Attention",
              ("cross", False): "Remove CBAM Module", ("visual", True): "Visual Features Only",
              ("text", True): "Text Features Only"}


def table1_row(levels: dict) -> str:
    """The paper's Table 1 row an ablation cell stands for ("" for none): its architecture, fusion and CBAM
    with the paper's ALBERT text encoder (defaults: the configuration's)."""
    if levels.get("text_encoder", "albert") != "albert":
        return ""
    return ROW_OF.get((levels.get("arch", "vl_fusion"), levels.get("fusion", "cross"), levels.get("use_cbam", True)), "")
