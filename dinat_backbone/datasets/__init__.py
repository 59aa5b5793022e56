"""The small COCO / ADE20K-style samples the demo, the sample configs and the tests run on."""
