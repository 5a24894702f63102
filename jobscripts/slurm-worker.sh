#!/bin/bash
${directives}
#
# hpcscale worker job: pool ${pool}, manager ${manager}, submission ${tag}.
# Rendered by hpcscale ${version}; re-render (`hpcscale render-script ${pool}`) rather than edit.
# The worker reads its token from the file named on its command line: the token itself is
# never in this script, its arguments, the job's name, comment or environment.
# Slurm sends SIGUSR1 to this shell ${margin}s before the wall time; `exec` below makes the
# worker this shell, so the worker hears it and drains.

export HPCSCALE_JOB_STARTED=$$EPOCHREALTIME  # the worker measures its start-up from here
# --- setup from [pools.slurm].setup ---
${setup}
# --- the worker ---
exec ${command}
