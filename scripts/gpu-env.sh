# Sourced by the GPU scripts: puts NVRTC (libnvrtc.so.13) and the CUDA tools on the paths.
# NVRTC: the toolkit's, else a pip wheel's (nvidia-cuda-nvrtc).
if ! ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so\.13'; then
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
        $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null); do
        if [[ -e $d/libnvrtc.so.13 ]]; then
            export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            break
        fi
    done
fi
export PATH="$PATH:/usr/local/cuda/bin"
