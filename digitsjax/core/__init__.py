"""The pure core: the pipeline, the model and its option registries, the compiled training step
and epoch, data placement, and MNIST. Nothing here knows of workdirs or processes."""
