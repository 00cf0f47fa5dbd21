"""The backends lvsfw renders to: packet filters that set marks, IPVS, and render-only outputs."""
