"""The multi-task network (mask decoder + metastasis head), its node descriptors and the model folder that stores it."""
