# sourced at the start of every device call: model dirs, env
export PYTHONPATH=$PWD PAGEDSERVE_TEST_SMOLLM2_TOKENIZER=/tmp/smollm2 PYTHONUNBUFFERED=1
for m in smollm2 llama3; do
  if [ ! -f /tmp/$m/tokenizer.json ]; then
    mkdir -p /tmp/$m && cp .carry/$m/*.json .carry/$m/*.jinja /tmp/$m/ 2>/dev/null
    xz -dc .carry/$m/tokenizer.json.xz > /tmp/$m/tokenizer.json
  fi
done
V="bash .carry/vllm/device.sh"  # the vLLM bundle: vLLM, and the packages the image lacks
mkdir -p /tmp/logs
