"""The `vl_fusion` family (paper 003): cross-attention vision-language fusion on chest radiographs and
their reports — report generation, image-report matching and triage. (Issue 14: the text stack and the
metrics are here; the family's registration, stages and report come next.)"""
