#!/bin/sh
# Apache Kafka for docker-compose, with f2pipe's users, topics and ACLs (docs/security.md).
#
# Starts the image's own entry point, waits for the loopback listener (127.0.0.1:9094, inside
# this container only: the one listener without a login, whose ANONYMOUS principal is the
# super user), then, idempotently:
#   - one SCRAM-SHA-512 user per service, password from KAFKA_<SERVICE>_PASSWORD;
#   - the pipeline's topics with their configured partition counts;
#   - ACLs: bridge writes raw; processor reads raw, writes processed and dead letters and owns
#     its changelog topics and group; sink reads processed, writes dead letters; the api
#     reads dead letters and, for its live stream, processed (assigned partitions, no group:
#     it commits nothing).
# and writes /tmp/f2pipe-kafka-ready for the healthcheck. SIGTERM goes to Kafka.
set -eu

: "${KAFKA_BRIDGE_PASSWORD:?}" "${KAFKA_PROCESSOR_PASSWORD:?}" "${KAFKA_SINK_PASSWORD:?}"
: "${KAFKA_API_PASSWORD:?}"
RAW=${F2PIPE_RAW_TOPIC:-raw-iot-data}
PROCESSED=${F2PIPE_PROCESSED_TOPIC:-processed-iot-data}
DEAD=${F2PIPE_DEADLETTER_TOPIC:-iot-dead-letter}
APP=${F2PIPE_PROCESSOR_APP_ID:-f2pipe-processor}
SINK_GROUP=${F2PIPE_SINK_GROUP_ID:-f2pipe-sink}
BIN=/opt/kafka/bin
LOCAL="--bootstrap-server 127.0.0.1:9094"
rm -f /tmp/f2pipe-kafka-ready

/etc/kafka/docker/run &
kafka=$!
trap 'kill -TERM "$kafka" 2>/dev/null; wait "$kafka"; exit $?' TERM INT

until "$BIN/kafka-broker-api-versions.sh" $LOCAL >/dev/null 2>&1; do
  kill -0 "$kafka" 2>/dev/null || { wait "$kafka"; exit $?; }
  sleep 2
done

# kafka-configs.sh takes the password on its command line: visible to `ps` inside this
# container only, for the second it runs. Kafka stores a salted SCRAM hash, never the password.
for service in bridge processor sink api; do
  eval "password=\${KAFKA_$(echo "$service" | tr a-z A-Z)_PASSWORD}"
  "$BIN/kafka-configs.sh" $LOCAL --alter --entity-type users --entity-name "svc-$service" \
    --add-config "SCRAM-SHA-512=[iterations=8192,password=$password]" >/dev/null
done

topic() {  # name partitions
  "$BIN/kafka-topics.sh" $LOCAL --create --if-not-exists --topic "$1" --partitions "$2" \
    --replication-factor "${F2PIPE_REPLICATION_FACTOR:-1}" >/dev/null
}
topic "$RAW" "${F2PIPE_RAW_PARTITIONS:-6}"
topic "$PROCESSED" "${F2PIPE_PROCESSED_PARTITIONS:-6}"
topic "$DEAD" "${F2PIPE_PROCESSED_PARTITIONS:-6}"

acl() {  # principal, then kafka-acls.sh options
  who=$1; shift
  "$BIN/kafka-acls.sh" $LOCAL --add --allow-principal "User:$who" "$@" >/dev/null
}
acl svc-bridge --operation Write --operation Describe --topic "$RAW"
acl svc-bridge --operation Write --operation Describe --topic "$DEAD"
acl svc-processor --operation Read --operation Describe --topic "$RAW"
acl svc-processor --operation Write --operation Describe --topic "$PROCESSED"
acl svc-processor --operation Write --operation Describe --topic "$DEAD"
acl svc-processor --operation All --resource-pattern-type prefixed --topic "$APP-"
acl svc-processor --operation All --resource-pattern-type prefixed --group "$APP"
acl svc-sink --operation Read --operation Describe --topic "$PROCESSED"
acl svc-api --operation Read --operation Describe --topic "$DEAD"
# The api reads dead letters by assignment (no group join): its fixed group id is only named.
acl svc-api --operation Describe --group f2pipe-api-dead-letters
# The live stream (GET /v1/stream) reads its own copy of processed, by assignment too.
acl svc-api --operation Read --operation Describe --topic "$PROCESSED"
acl svc-api --operation Describe --group f2pipe-api-stream
acl svc-sink --operation Write --operation Describe --topic "$DEAD"
acl svc-sink --operation Read --group "$SINK_GROUP"

touch /tmp/f2pipe-kafka-ready
echo "f2pipe: Kafka users, topics and ACLs are in place"
wait "$kafka"
