"""Inspection: where the model looks (Grad-CAM, occlusion), transplant tests of the salient region, overlays."""
