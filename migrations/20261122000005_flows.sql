-- Sampled flow records reported by daemons (aggregated per report interval).
CREATE TABLE flow_records (
    id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    src TEXT NOT NULL,
    dst TEXT NOT NULL,
    proto BIGINT NOT NULL,
    src_port BIGINT NOT NULL,
    dst_port BIGINT NOT NULL,
    rule TEXT NOT NULL,
    verdict TEXT NOT NULL,
    packets BIGINT NOT NULL,
    bytes BIGINT NOT NULL
);

CREATE INDEX flow_records_device_at ON flow_records (device_id, at);
CREATE INDEX flow_records_at ON flow_records (at);
