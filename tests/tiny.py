"""A tiny member of the backbone's family, shared by the tests."""

TINY_NETWORK = "rope_vit_reg8_so150m_p14_swiglu_rms_avg"
TINY_CONFIG = {"hidden_dim": 64, "num_layers": 2, "num_heads": 4, "mlp_dim": 128, "drop_path_rate": 0.0}
