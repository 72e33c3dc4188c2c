"""The Redis key layout, in one place (architecture.md, "Data").

Every key starts with a prefix and names its owner. Keys of one UE share the hash tag
``{<ueSvcId>}`` so that the layout works on Redis Cluster: everything the router does for
one recipient stays in one slot.

| key | type | owner | what |
|---|---|---|---|
| ``<p>:ue:{id}:known`` | string | registry | the UE is provisioned or has registered once (no TTL) |
| ``<p>:ue:{id}:reg`` | hash | registry | the live registration; TTL = lifetime |
| ``<p>:ue:{id}:route`` | hash | router | route lease: edge kind, replica id, epoch; TTL |
| ``<p>:ue:{id}:inbox`` | sorted set | router | pending downlink refs by priority, then arrival |
| ``<p>:ue:{id}:docs`` | hash | router | ref -> serialized ``Downlink`` |
| ``<p>:ue:{id}:seq`` | string | router | arrival counter of the UE's inbox |
| ``<p>:msg:{ori}:<msgId>`` | hash | router | message record: document, outcome, per-recipient state |
| ``<p>:ue:{id}:retry`` | string | router | forwards of the UE's pending documents without an acknowledgement |
| ``<p>:expiry`` | sorted set | router | ``<ueSvcId>\\x1f<inbox ref>`` by expiry time (ms), for the sweeper |
| ``<p>:retry`` | sorted set | router | UEs by the time (ms) their unacknowledged documents are sent again |
| ``<p>:sweeper`` | string | router | lock: the router replica that sweeps expiries and retries now |
| ``<p>:group:{gid}:members`` | sorted set | registry | group members (score 0, paged by member id) |
| ``<p>:topic:{t}:subs`` | sorted set | registry | a topic's subscribers by subscription expiry (ms; +inf: none) |
| ``<p>:bc:{area}:ues`` | sorted set | registry | UEs registered in a broadcast area, by registration expiry (ms) |
| ``<p>:fanout:{ori}:<msgId>:rcpts`` | sorted set | router | a topic or broadcast message's recipients, taken at acceptance |
| ``<p>:fanout`` | stream | router | fan-out tasks: one page of a group's members each |
| ``<p>:fanout:{ori}:<msgId>`` | hash | router | a fan-out's progress (cursor, done) |
| ``<p>:edge:<kind>:<id>`` | string | each edge | the replica's gRPC address; TTL = heartbeat |
| ``<p>:edges:<kind>`` | sorted set | each edge | replica ids by heartbeat expiry (ms), to pick any live one |
| ``<p>:as:{id}:known`` | string | registry | the AS has registered once (no TTL) |
| ``<p>:as:{id}:reg`` | hash | registry | the AS's registration: registrationId, targetUri, appId, profile |
| ``<p>:asreg:<registrationId>`` | string | registry | registrationId -> asSvcId |
| ``<p>:seg:{ori}:<segId>`` | hash | router | an uplink message being reassembled: its segments by number, the total |
| ``<p>:seg:{ori}:open`` | set | router | the originator's reassemblies under way (bounded) |
| ``<p>:segexp`` | sorted set | router | ``<ori>\x1f<segId>`` by reassembly deadline (ms), for the sweeper |
| ``<p>:ue:{id}:cred`` | hash | registry | device credentials: PSK and OSCORE material wrapped (AES-GCM), MQTT password hashed, the previous ones during a rotation's grace, ``gen``; after a revocation only ``gen`` and ``revokedAt`` |
| ``<p>:oscore:{kid}`` | string | registry | OSCORE sender id of a device (hex) -> ueSvcId; a rotated-out id lives as long as its grace |
| ``<p>:{credentials}:version`` | string | registry | counter of credential changes |
| ``<p>:{credentials}:changes`` | sorted set | registry | ueSvcIds by the version of their last credential change (create, rotate, revoke) |
| ``<p>:credentials:revoked`` | pub/sub channel | registry | a ueSvcId whose credentials were revoked: end its sessions |

**Recipients.** The router keeps the pending documents of an application server exactly as
those of a UE: inbox, docs, seq, retry and the schedules, under the recipient id
``as/<asSvcId>``. A UE Service ID never contains ``/``, so the two cannot collide; topic
subscriber sets hold the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass

AS_PREFIX = "as/"


def as_recipient(as_svc_id: str) -> str:
    """The recipient id of an application server (see "Recipients" above)."""
    return AS_PREFIX + as_svc_id


def as_of(rcpt: str) -> str | None:
    """The asSvcId of an AS recipient id, None for a UE."""
    return rcpt[len(AS_PREFIX) :] if rcpt.startswith(AS_PREFIX) else None


def address_key_of(rcpt: str) -> str:
    """``UE:<id>`` or ``AS:<id>``: how message records name a recipient."""
    as_id = as_of(rcpt)
    return f"UE:{rcpt}" if as_id is None else f"AS:{as_id}"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "m5g"

    def ue_known(self, ue: str) -> str:
        return f"{self.prefix}:ue:{{{ue}}}:known"

    def ue_reg(self, ue: str) -> str:
        return f"{self.prefix}:ue:{{{ue}}}:reg"

    def route(self, ue: str) -> str:
        return f"{self.prefix}:ue:{{{ue}}}:route"

    def inbox(self, ue: str) -> str:
        return f"{self.prefix}:ue:{{{ue}}}:inbox"

    def docs(self, ue: str) -> str:
        return f"{self.prefix}:ue:{{{ue}}}:docs"

    def seq(self, ue: str) -> str:
        return f"{self.prefix}:ue:{{{ue}}}:seq"

    def retry_count(self, ue: str) -> str:
        return f"{self.prefix}:ue:{{{ue}}}:retry"

    def group_members(self, group: str) -> str:
        return f"{self.prefix}:group:{{{group}}}:members"

    def topic_subs(self, topic: str) -> str:
        return f"{self.prefix}:topic:{{{topic}}}:subs"

    def bc_area(self, area: str) -> str:
        return f"{self.prefix}:bc:{{{area}}}:ues"

    def fanout_recipients(self, ori: str, msg_id: str) -> str:
        return f"{self.prefix}:fanout:{{{ori}}}:{msg_id}:rcpts"

    def fanout_stream(self) -> str:
        return f"{self.prefix}:fanout"

    def fanout_job(self, ori: str, msg_id: str) -> str:
        return f"{self.prefix}:fanout:{{{ori}}}:{msg_id}"

    def expiry(self) -> str:
        return f"{self.prefix}:expiry"

    def retry(self) -> str:
        return f"{self.prefix}:retry"

    def sweeper(self) -> str:
        return f"{self.prefix}:sweeper"

    def message(self, ori: str, msg_id: str) -> str:
        """``ori`` is the originator as ``<addrType>:<addr>``; its hash tag keeps a sender's
        records together."""
        return f"{self.prefix}:msg:{{{ori}}}:{msg_id}"

    def as_known(self, as_svc_id: str) -> str:
        return f"{self.prefix}:as:{{{as_svc_id}}}:known"

    def as_reg(self, as_svc_id: str) -> str:
        return f"{self.prefix}:as:{{{as_svc_id}}}:reg"

    def as_registration(self, registration_id: str) -> str:
        return f"{self.prefix}:asreg:{registration_id}"

    def known(self, rcpt: str) -> str:
        """The "known" key of a recipient id (UE or AS)."""
        as_id = as_of(rcpt)
        return self.ue_known(rcpt) if as_id is None else self.as_known(as_id)

    def registration(self, rcpt: str) -> str:
        """The live registration of a recipient id (UE or AS)."""
        as_id = as_of(rcpt)
        return self.ue_reg(rcpt) if as_id is None else self.as_reg(as_id)

    def reassembly(self, ori: str, seg_id: str) -> str:
        return f"{self.prefix}:seg:{{{ori}}}:{seg_id}"

    def reassemblies(self, ori: str) -> str:
        return f"{self.prefix}:seg:{{{ori}}}:open"

    def reassembly_deadlines(self) -> str:
        return f"{self.prefix}:segexp"

    def edge(self, kind: str, edge_id: str) -> str:
        return f"{self.prefix}:edge:{kind}:{edge_id}"

    def edges(self, kind: str) -> str:
        return f"{self.prefix}:edges:{kind}"

    def credentials(self, ue: str) -> str:
        return f"{self.prefix}:ue:{{{ue}}}:cred"

    def oscore_kid(self, kid_hex: str) -> str:
        return f"{self.prefix}:oscore:{{{kid_hex}}}"

    def credentials_version(self) -> str:
        return f"{self.prefix}:{{credentials}}:version"

    def credentials_changes(self) -> str:
        return f"{self.prefix}:{{credentials}}:changes"

    def credentials_revoked(self) -> str:
        """A pub/sub channel, not a key: the ueSvcIds whose credentials were revoked."""
        return f"{self.prefix}:credentials:revoked"
