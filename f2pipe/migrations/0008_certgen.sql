-- certgen: the broker's certificate in the registry, and the claim-code lockout.
--
-- The lockout lives here rather than in certgen's memory so that it survives a restart and
-- holds across replicas: otherwise restarting the service (or round-robin over two) would
-- hand an attacker a fresh budget of guesses.

-- The CA issues the broker's server certificate too; it is recorded like every other, so the
-- registry lists everything the CA ever signed.
ALTER TABLE registry.certificates DROP CONSTRAINT certificates_kind_check;
ALTER TABLE registry.certificates ADD CONSTRAINT certificates_kind_check
    CHECK (kind IN ('device', 'service', 'broker'));

-- One row per wrong claim code, kept for the counting window only (certgen prunes older rows
-- of a MAC when it records a new one, and all of them when the MAC locks or enrols).
CREATE TABLE registry.claim_failures (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mac text NOT NULL REFERENCES registry.devices (mac) ON UPDATE CASCADE ON DELETE CASCADE,
    failed_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX claim_failures_mac_time ON registry.claim_failures (mac, failed_at);

-- A MAC that collected too many wrong codes: every enrolment for it is refused until
-- locked_until, even with the right code. Deleting the row lifts the lockout early.
CREATE TABLE registry.enrolment_lockouts (
    mac text PRIMARY KEY REFERENCES registry.devices (mac) ON UPDATE CASCADE ON DELETE CASCADE,
    locked_at timestamptz NOT NULL DEFAULT now(),
    locked_until timestamptz NOT NULL,
    failures integer NOT NULL CHECK (failures > 0),
    CONSTRAINT enrolment_lockouts_period CHECK (locked_until > locked_at)
);

COMMENT ON TABLE registry.claim_failures IS
    'certgen: wrong claim codes per controller MAC within the lockout counting window';
COMMENT ON TABLE registry.enrolment_lockouts IS
    'certgen: controllers refused enrolment until locked_until; delete a row to unlock early';
