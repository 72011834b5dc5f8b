#!/bin/sh
# One-shot: make the worker's build the current version of its Worker Deployment, so that new
# processes and the auto-upgrading mutex run on it (docs/upgrades.md). Until a version is
# current, the server hands workflow tasks to unversioned workers only, and nothing would run.
#
# The server learns of a version when one of its workers first polls, so the first tries may be
# refused ("does your Worker Deployment have pollers?"): try again for a while. Setting the
# version that is already current succeeds, so it runs on every `docker compose up`.
set -eu

: "${TEMPORAL_ADDRESS:?}" "${APPROVAL_DEPLOYMENT_NAME:?}" "${APPROVAL_BUILD_ID:?}"
NAMESPACE="${TEMPORAL_NAMESPACE:-default}"

tries=0
until temporal worker deployment set-current-version --address "${TEMPORAL_ADDRESS}" \
  --namespace "${NAMESPACE}" --deployment-name "${APPROVAL_DEPLOYMENT_NAME}" \
  --build-id "${APPROVAL_BUILD_ID}" --yes; do
  tries=$((tries + 1))
  if [ "${tries}" -ge 60 ]; then
    echo "build ${APPROVAL_BUILD_ID} of ${APPROVAL_DEPLOYMENT_NAME} did not become current" >&2
    exit 1
  fi
  sleep 2
done
echo "build ${APPROVAL_BUILD_ID} of worker deployment ${APPROVAL_DEPLOYMENT_NAME} is current"
