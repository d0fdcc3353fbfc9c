"""Inference: predictor (ensembles), model server, reassembly onto the source grid."""
