"""Everything that imports torch: ONNX conversion, data reading, attacks and the evaluation.

The HTTP and web layers never import this package; the worker, the command line
and the demo do.
"""
