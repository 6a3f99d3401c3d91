"""blackbox-audit: what did a finetune teach a model you cannot open?"""

__version__ = "0.1.0"
