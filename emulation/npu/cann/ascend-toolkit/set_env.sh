# Emulated CANN's set_env.sh: what sourcing the real one sets that the study reads.
# blendstudy sets the same itself when BLENDSTUDY_EMULATE=npu (blendstudy/emulation.py).
_here="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"
export ASCEND_TOOLKIT_HOME="${_here}/latest"
export ASCEND_HOME_PATH="${_here}/latest"
export PATH="${_here}/../../bin:${PATH}"
unset _here
