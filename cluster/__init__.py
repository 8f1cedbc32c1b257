"""Stage program `python -m cluster {features,activations,all}`: FAISS prototypes.

`features`: K-Means prototypes of the visual feature cache (`memory.cross`), written to
`runs/<ds>/prototypes/features.npz`. `activations`: PMA-Net key/value prototypes per decoder
layer (`memory.self`) from the banks the trainer dumps to `runs/<ds>/memory/banks.npz`, written
to `runs/<ds>/prototypes/memory.npz`. The K-Means / k-NN library is `shared.prototypes`.
"""
