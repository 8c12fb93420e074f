print("hv-bench: not yet")
