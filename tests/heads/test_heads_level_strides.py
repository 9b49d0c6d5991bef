import pytest

from vitdense.heads.semantic_fpn_head import SemanticFPNHead
from vitdense.heads.upernet_head import UperNetHead


@pytest.mark.parametrize("head_class", [SemanticFPNHead, UperNetHead])
@pytest.mark.parametrize(
    ("strides", "in_features", "match"),
    [
        ({"p2": 3.5, "p3": 7.0, "p4": 14.0, "p5": 28.0}, ("p2", "p4"), "twice the previous"),
        ({"p2": 3.5, "p3": 7.0, "p4": 14.0, "p5": 28.0}, ("p3", "p2"), "twice the previous"),
        ({"p2": 4.0, "p3": 7.0, "p4": 14.0, "p5": 28.0}, ("p2", "p3", "p4", "p5"), r"p3 at stride 7.0 after"),
        ({"p3": 7.0, "p4": 14.0}, ("p2", "p3"), r"levels \['p2'\] are not among"),
    ],
)
def test_mismatching_strides_are_rejected(head_class, strides, in_features, match):
    with pytest.raises(ValueError, match=match):
        head_class(2, 16, strides, in_features=in_features, channels=32)
