"""Downstream evaluation: does fusion help a detector? (`adaray downstream`, docs/downstream.md)

`labels` reads YOLO label files and holds the ground-truth rule, `data` the labelled pairs and
their split, `detector` the torchvision detector with its training and mAP, `report` the
tables and figures, `job` the Ray job that ties them together.
"""

from adaray.downstream.data import DetectionData, DetectionSample, load_detection_data
from adaray.downstream.detector import DetectorConfig, detection_scores, train_detector
from adaray.downstream.job import DownstreamResult, run_downstream
from adaray.downstream.labels import LABEL_SETS, Boxes, LabelError, merge_union, read_labels

__all__ = ["LABEL_SETS", "Boxes", "DetectionData", "DetectionSample", "DetectorConfig",
           "DownstreamResult", "LabelError", "detection_scores", "load_detection_data",
           "merge_union", "read_labels", "run_downstream", "train_detector"]
