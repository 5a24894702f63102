#!/bin/bash
#
# hpcscale worker (local scheduler): pool ${pool}, manager ${manager}, submission ${tag}.
# Rendered by hpcscale ${version}. The local scheduler runs this once per array element with
# SLURM_ARRAY_TASK_ID-like variables, SIGUSR1 ${margin}s before the time limit and SIGTERM at it.
# The token is read from the file named on the worker's command line, never passed here.

export HPCSCALE_JOB_STARTED=$$EPOCHREALTIME  # the worker measures its start-up from here
# --- setup from [pools.slurm].setup ---
${setup}
# --- the worker ---
exec ${command}
