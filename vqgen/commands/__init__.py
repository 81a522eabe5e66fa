"""The commands, one module per family, each called by vqgen.cli with the options it was given: stage1
(train-vqvae, reconstruct, encode), stage2 (train-prior), sample, evaluate. They use the library modules of
vqgen below them and never one another; no library module imports them."""
