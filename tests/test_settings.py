"""Configuration: defaults that work locally, errors that name the variable, secrets from files."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.settings import DEV_WEBHOOK_SECRET, ConfigError, Settings, is_configured


def test_defaults_match_the_design() -> None:
    s = Settings.from_env({})
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert s.stripe_webhook_secrets == (DEV_WEBHOOK_SECRET,)
    assert (s.stripe_webhook_tolerance, s.gateway_host, s.gateway_port) == (300, "0.0.0.0", 8000)
    assert (s.gateway_max_body_bytes, s.topic_prefix, s.topic_partitions) == (1_048_576, "stripe.", 8)
    assert (s.gateway_max_header_bytes, s.gateway_client_timeout) == (65_536, 10.0)
    assert (s.worker_web_port, s.state_store, s.kafka_enable_idempotence) == (6066, "memory://", True)
    assert (s.worker_web_bind, s.worker_web_host, s.log_level) == ("0.0.0.0", None, "INFO")
    assert (s.producer_linger_ms, s.producer_max_batch_size, s.producer_batch_records) == (2, 1_048_576, 16)
    assert s.using_dev_secret


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_every_client_logs_in_with_the_same_mechanism_and_credentials(protocol: str) -> None:
    """The gateway's librdkafka producer, the aiokafka clients (replay, audit, admin) and the worker's Faust app
    each get the login from the one Settings (a real SASL login is not shown: the embedded broker keeps its SCRAM
    users in its own memory, tests/test_security.py)."""
    from faust import SASLCredentials

    from gateway.rdkafka import librdkafka_config
    from ops.kafka import client_options, faust_broker_options

    settings = Settings.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": protocol,
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": "hookstream",
            "KAFKA_SASL_PASSWORD": "s3cret",
        }
    )
    rdkafka = librdkafka_config(settings)
    assert rdkafka["security.protocol"] == protocol.lower()
    assert (rdkafka["sasl.mechanism"], rdkafka["sasl.username"], rdkafka["sasl.password"]) == (
        "SCRAM-SHA-512",
        "hookstream",
        "s3cret",
    )
    aiokafka = client_options(settings)
    assert aiokafka["security_protocol"] == protocol
    assert (aiokafka["sasl_mechanism"], aiokafka["sasl_plain_username"], aiokafka["sasl_plain_password"]) == (
        "SCRAM-SHA-512",
        "hookstream",
        "s3cret",
    )
    assert ("ssl_context" in aiokafka) is (protocol == "SASL_SSL")
    credentials = faust_broker_options(settings)["broker_credentials"]
    assert isinstance(credentials, SASLCredentials)
    assert (credentials.mechanism.value, credentials.username, credentials.password) == (
        "SCRAM-SHA-512",
        "hookstream",
        "s3cret",
    )
    assert credentials.protocol.value == protocol
    assert (credentials.ssl_context is not None) is (protocol == "SASL_SSL")


def test_the_security_protocol_is_one_of_kafkas_in_any_case() -> None:
    login = {"KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"}
    sasl = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "sasl_ssl", **login})
    assert (sasl.kafka_security_protocol, sasl.kafka_sasl_mechanism, sasl.kafka_tls, sasl.kafka_sasl) == (
        "SASL_SSL",
        "PLAIN",
        True,
        True,
    )
    scram = Settings.from_env(
        {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "scram-sha-512", **login}
    )
    assert (scram.kafka_sasl_mechanism, scram.kafka_tls, scram.kafka_sasl) == ("SCRAM-SHA-512", False, True)
    mutual = Settings.from_env(
        {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": "c.pem", "KAFKA_SSL_KEYFILE": "k.pem"}
    )
    assert (mutual.kafka_ssl_certfile, mutual.kafka_ssl_keyfile, mutual.kafka_ssl_key_password) == (
        "c.pem",
        "k.pem",
        None,
    )


def test_several_secrets_for_rotation() -> None:
    s = Settings.from_env({"STRIPE_WEBHOOK_SECRETS": " whsec_old , whsec_new ,"})
    assert s.stripe_webhook_secrets == ("whsec_old", "whsec_new")
    assert not s.using_dev_secret


def test_secret_from_a_mounted_file(tmp_path: Path) -> None:
    path = tmp_path / "webhook-secrets"
    path.write_text("whsec_from_file\n")
    s = Settings.from_env({"STRIPE_WEBHOOK_SECRETS_FILE": str(path), "STRIPE_WEBHOOK_SECRETS": "whsec_env"})
    assert s.stripe_webhook_secrets == ("whsec_from_file",)
    path.write_text("whsec_old\nwhsec_new\n")  # one per line: two secrets, not one with a newline in it
    s = Settings.from_env({"STRIPE_WEBHOOK_SECRETS_FILE": str(path)})
    assert s.stripe_webhook_secrets == ("whsec_old", "whsec_new")
    path.write_text("whsec_real  # rotated on Monday\n")  # a comment's words would each be a key anyone can sign with
    with pytest.raises(ConfigError, match=r"secret 2 is not whsec_ and a key \(not shown\)") as refused:
        Settings.from_env({"STRIPE_WEBHOOK_SECRETS_FILE": str(path)})
    assert "whsec_real" not in str(refused.value) and "rotated" not in str(refused.value)
    with pytest.raises(ConfigError, match="STRIPE_WEBHOOK_SECRETS_FILE"):
        Settings.from_env({"STRIPE_WEBHOOK_SECRETS_FILE": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("\n")  # mounted empty: an error, never the development secret
    with pytest.raises(ConfigError, match=r"STRIPE_WEBHOOK_SECRETS_FILE: .* is empty"):
        Settings.from_env({"STRIPE_WEBHOOK_SECRETS_FILE": str(tmp_path / "empty")})


def test_a_variable_counts_as_configured_as_the_settings_read_it(tmp_path: Path) -> None:
    """What ``hookstream dev`` asks before starting its own broker: brokers named in a mounted file count, an
    empty variable does not (the settings fall back to the default), an empty file is an error."""
    servers = tmp_path / "servers"
    servers.write_text("kafka-0:9092\n")
    empty = tmp_path / "empty"
    empty.write_text("")
    assert is_configured("KAFKA_BOOTSTRAP_SERVERS", {"KAFKA_BOOTSTRAP_SERVERS": "kafka-0:9092"})
    assert is_configured("KAFKA_BOOTSTRAP_SERVERS", {"KAFKA_BOOTSTRAP_SERVERS_FILE": str(servers)})
    assert not is_configured("KAFKA_BOOTSTRAP_SERVERS", {"KAFKA_BOOTSTRAP_SERVERS": ""})
    assert not is_configured("KAFKA_BOOTSTRAP_SERVERS", {})
    with pytest.raises(ConfigError, match=r"KAFKA_BOOTSTRAP_SERVERS_FILE: .* is empty"):
        is_configured("KAFKA_BOOTSTRAP_SERVERS", {"KAFKA_BOOTSTRAP_SERVERS_FILE": str(empty)})


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"GATEWAY_PORT": "eighty"}, "GATEWAY_PORT"),
        ({"TOPIC_PARTITIONS": "0"}, "TOPIC_PARTITIONS"),
        ({"TOPIC_MIN_INSYNC_REPLICAS": "2"}, "TOPIC_MIN_INSYNC_REPLICAS"),  # above the replication factor (1)
        ({"STRIPE_WEBHOOK_SECRETS": " , "}, "STRIPE_WEBHOOK_SECRETS"),
        ({"KAFKA_ENABLE_IDEMPOTENCE": "maybe"}, "KAFKA_ENABLE_IDEMPOTENCE"),
        ({"GATEWAY_PUBLISH_TIMEOUT": "0"}, "GATEWAY_PUBLISH_TIMEOUT"),
        ({"GATEWAY_CLIENT_TIMEOUT": "-1"}, "GATEWAY_CLIENT_TIMEOUT"),
        ({"GATEWAY_MAX_HEADER_BYTES": "512"}, "GATEWAY_MAX_HEADER_BYTES"),
        ({"TOPIC_PREFIX": "bad prefix/"}, "TOPIC_PREFIX"),
        ({"LOG_LEVEL": "TRACE"}, "LOG_LEVEL"),
        ({"PRODUCER_BATCH_RECORDS": "0"}, "PRODUCER_BATCH_RECORDS"),
        ({"PRODUCER_LINGER_MS": "10000"}, "PRODUCER_LINGER_MS"),  # not below GATEWAY_PUBLISH_TIMEOUT (10 s)
        ({"PRODUCER_BATCH_RECORDS": "1000001"}, "PRODUCER_BATCH_RECORDS"),
        ({"PRODUCER_COMPRESSION": "brotli"}, "PRODUCER_COMPRESSION"),
        ({"GATEWAY_PUBLISH_TIMEOUT": "0.0005", "PRODUCER_LINGER_MS": "0"}, "GATEWAY_PUBLISH_TIMEOUT"),  # 0 ms: never
        # ports wrap around in the socket layer (70000 listened on 4464); durations are finite and fit Kafka's
        # 32-bit milliseconds (librdkafka refused 3000000 s naming message.timeout.ms; inf raised OverflowError)
        ({"GATEWAY_PORT": "70000"}, "GATEWAY_PORT"),
        ({"WORKER_WEB_PORT": "65536"}, "WORKER_WEB_PORT"),
        ({"GATEWAY_PUBLISH_TIMEOUT": "inf"}, "GATEWAY_PUBLISH_TIMEOUT"),
        ({"GATEWAY_PUBLISH_TIMEOUT": "nan"}, "GATEWAY_PUBLISH_TIMEOUT"),
        ({"GATEWAY_PUBLISH_TIMEOUT": "3000000"}, "GATEWAY_PUBLISH_TIMEOUT"),
        ({"HANDLER_TIMEOUT": "1e306"}, "HANDLER_TIMEOUT"),
        ({"GATEWAY_RETRY_AFTER": "99999999"}, "GATEWAY_RETRY_AFTER"),
        ({"STRIPE_WEBHOOK_SECRETS": "whsec_"}, "STRIPE_WEBHOOK_SECRETS"),  # a placeholder left in a template
        ({"STRIPE_WEBHOOK_TOLERANCE": "1" + "0" * 400}, "STRIPE_WEBHOOK_TOLERANCE"),  # every delivery raised
        ({"KAFKA_SECURITY_PROTOCOL": "SASL-SSL"}, "KAFKA_SECURITY_PROTOCOL"),  # the clients failed at connect only
        # a login without its name or password; a mechanism that does not log in with them (the clients failed at
        # connect, the gateway only in its log)
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_PASSWORD": "p"}, "KAFKA_SASL_USERNAME and"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u"}, "KAFKA_SASL_USERNAME and"),
        ({"KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM"),
        # a client certificate without its key, or sent over no TLS at all
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": "c.pem"}, "KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_KEYFILE": "k.pem"}, "KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE"),
        ({"KAFKA_SSL_CERTFILE": "c.pem", "KAFKA_SSL_KEYFILE": "k.pem"}, "KAFKA_SSL_CERTFILE: .* PLAINTEXT"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env(env)


def test_events_running_at_a_rebalance_get_the_handler_timeout_at_most_half_the_rebalance_timeout() -> None:
    """The group hands a member's partitions to the others when it has not rejoined within the rebalance timeout:
    the other half is for the changelog's flush and the join."""
    assert Settings.from_env({}).rebalance_grace == Settings.from_env({}).handler_timeout == 30
    short = Settings.from_env({"WORKER_REBALANCE_TIMEOUT": "3"})
    assert short.rebalance_grace == 1.5
    assert Settings.from_env({"HANDLER_TIMEOUT": "5"}).rebalance_grace == 5


def test_what_the_worker_and_the_topics_it_creates_take_follows_kafka_max_message_bytes() -> None:
    """A changelog batch over the brokers' limit is refused whole, every time (the worker crashed in a loop), and
    a topic's own max.message.bytes comes before the brokers': both follow KAFKA_MAX_MESSAGE_BYTES."""
    from ops.kafka import dead_letter_topic_configs, topic_configs

    default = Settings.from_env({})
    assert default.worker_producer_batch_bytes == default.worker_producer_max_batch_size
    assert "max.message.bytes" not in topic_configs(default)  # Kafka's default: nothing to say
    small = Settings.from_env({"KAFKA_MAX_MESSAGE_BYTES": "524288"})
    assert small.worker_producer_batch_bytes == 524_288
    large = Settings.from_env(
        {"KAFKA_MAX_MESSAGE_BYTES": "5242880", "TOPIC_REPLICATION_FACTOR": "3", "TOPIC_MIN_INSYNC_REPLICAS": "2"}
    )
    assert topic_configs(large) == {"min.insync.replicas": "2", "max.message.bytes": "5242880"}
    assert dead_letter_topic_configs(large) == {**topic_configs(large), "retention.ms": "-1"}
