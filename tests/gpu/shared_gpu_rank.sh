#!/usr/bin/env bash
# One MPI rank of a job whose ranks share this machine's GPU(s), for correctness and fault tests
# of the NCCL paths on a machine with fewer GPUs than ranks (never for speed):
#   mpirun -np 4 tests/gpu/shared_gpu_rank.sh build-gpu/dstrain --config ...
# NCCL refuses two ranks of one host on one GPU ("Duplicate GPU detected"). A host id of each
# rank's own (NCCL_HOSTID) makes every rank a host of its own to NCCL, so the ranks talk through
# NCCL's network transport (sockets on the loopback interface), and DSTRAIN_TEST_SHARE_GPU=1 lets
# dstrain and the NCCL tests place more ranks than GPUs (cuda:<local rank mod GPUs>).
set -eu
export NCCL_HOSTID="dstrain-shared-gpu-rank-${OMPI_COMM_WORLD_RANK:?run this under Open MPI mpirun}"
export DSTRAIN_TEST_SHARE_GPU=1
export NCCL_SOCKET_IFNAME=lo
export NCCL_IB_DISABLE=1
exec "$@"
