r"""The engine of the pair-attribution family, one file per stage.

Floors, bottom to top (a file imports only from lower floors)::

    checks, captum_compat   the call: argument and data checks, warnings
    model, pairs            what the model is; stage 1, arguments -> Pairs
    layer                   stage 2, Pairs -> Features (the hooks' owner)
    references, taps        stage 1 for embeddings (references=, contrast);
                            token layers as grids for SimilarityTarget
    graph                   stage 2 for embeddings: one graph of the queries,
                            batched backward passes for many references
    correspondence          point-to-point readings of any member
    base                    PairAttribution, what every member shares
    forward, gradient       the two kinds of member: stages 3 and 4
    blocks                  gradient members read at several layers
"""
