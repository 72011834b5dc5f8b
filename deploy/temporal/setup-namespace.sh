#!/bin/sh
# One-shot: once the Temporal server answers, make sure the namespace exists and that the
# search attributes the workflows upsert are registered in it. Idempotent: what exists is left
# alone, so it runs on every `docker compose up`.
#
# Follows temporalio/samples-server compose/scripts/create-namespace.sh (the temporalio/server
# image, unlike the deprecated auto-setup image, creates no namespace by itself) and adds the
# search attributes. SEARCH_ATTRIBUTES is a space-separated list of Name:Type pairs.
set -eu

: "${TEMPORAL_ADDRESS:?}"
NAMESPACE="${TEMPORAL_NAMESPACE:-default}"
RETENTION="${NAMESPACE_RETENTION:-72h}"
SEARCH_ATTRIBUTES="${SEARCH_ATTRIBUTES:-ProcessStatus:Keyword}"

echo "waiting for Temporal at ${TEMPORAL_ADDRESS}"
tries=0
until temporal operator cluster health --address "${TEMPORAL_ADDRESS}" >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "${tries}" -ge 60 ]; then
    echo "Temporal at ${TEMPORAL_ADDRESS} did not become healthy" >&2
    exit 1
  fi
  sleep 2
done

if temporal operator namespace describe --address "${TEMPORAL_ADDRESS}" \
  --namespace "${NAMESPACE}" >/dev/null 2>&1; then
  echo "namespace ${NAMESPACE} exists"
else
  temporal operator namespace create --address "${TEMPORAL_ADDRESS}" \
    --namespace "${NAMESPACE}" --retention "${RETENTION}"
  echo "namespace ${NAMESPACE} created (retention ${RETENTION})"
fi

registered() {
  # The list prints one attribute per line, name first.
  temporal operator search-attribute list --address "${TEMPORAL_ADDRESS}" \
    --namespace "${NAMESPACE}" | awk '{print $1}' | grep -qx "$1"
}

for pair in ${SEARCH_ATTRIBUTES}; do
  name="${pair%%:*}"
  type="${pair#*:}"
  # A namespace created a moment ago is not known to every part of the server yet
  # ("Namespace ... is not found"), so try for a while.
  tries=0
  until registered "${name}"; do
    tries=$((tries + 1))
    if [ "${tries}" -gt 30 ]; then
      echo "could not register search attribute ${name}" >&2
      exit 1
    fi
    if temporal operator search-attribute create --address "${TEMPORAL_ADDRESS}" \
      --namespace "${NAMESPACE}" --name "${name}" --type "${type}"; then
      echo "search attribute ${name} (${type}) registered"
    else
      sleep 2
    fi
  done
  echo "search attribute ${name} is registered"
done
