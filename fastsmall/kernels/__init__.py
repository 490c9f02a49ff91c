"""Triton GPU kernels (run on CPU tensors only under TRITON_INTERPRET=1).

Each module holds the kernels of one op family and launchers with the same
names and signatures as the torch.ops.fastsmall ops they implement.
"""
