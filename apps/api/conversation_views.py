"""Conversations over REST: the caller's own threads (a browser session's user, or the key's creator), read
and deleted. Asking a follow-up stays on the Ask page and ``POST /api/v1/queries``' runs; docs/api.md."""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.api.serializers import list_of
from apps.api.shortcuts import paginated_response
from apps.conversations import selectors as conversation_selectors
from apps.conversations import services as conversation_services
from apps.conversations.models import Conversation
from apps.costs.money_format import money_str


def _own_conversations(request):
    """The caller's conversations in the team; none for a key whose creator is gone."""
    if not request.user.is_authenticated:
        return Conversation.objects.none()
    return conversation_selectors.conversation_list(team=request.team, user=request.user)


def _own_conversation(request, conversation_id: int) -> Conversation:
    if not request.user.is_authenticated:
        raise Http404("no such conversation")
    return conversation_selectors.conversation_get(team=request.team, user=request.user,
                                                   conversation_id=conversation_id)


class ConversationOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    title = serializers.CharField()
    turn_count = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class ConversationTurnSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="The turn's query (GET /api/v1/queries/{id} for citations and cost)")
    question = serializers.CharField()
    answer = serializers.CharField()
    status = serializers.CharField()
    finish_reason = serializers.CharField()
    pipeline = serializers.CharField(source="pipeline.name", allow_null=True, default=None)
    regenerated_from = serializers.IntegerField(source="regenerated_from_id", allow_null=True)
    created_at = serializers.DateTimeField()


class ConversationDetailSerializer(ConversationOutputSerializer):
    cost = serializers.CharField(help_text="USD: every ledger row of its turns (running ones included)")
    turns = ConversationTurnSerializer(many=True)


class ConversationListView(APIView):
    required_scopes = {"GET": ("read", "query")}

    @extend_schema(
        operation_id="api_v1_conversations_list",
        responses=list_of(ConversationOutputSerializer),
        summary="Your conversations in the team, newest activity first",
    )
    def get(self, request):
        return paginated_response(self, request, _own_conversations(request), ConversationOutputSerializer)


class ConversationDetailView(APIView):
    required_scopes = {"GET": ("read", "query"), "DELETE": "query"}

    @extend_schema(responses=ConversationDetailSerializer, summary="One of your conversations: its turns and cost")
    def get(self, request, conversation_id: int):
        conversation = _own_conversation(request, conversation_id)
        data = {
            "id": conversation.pk, "title": conversation.title, "turn_count": conversation.turn_count,
            "created_at": conversation.created_at, "updated_at": conversation.updated_at,
            "cost": money_str(conversation_selectors.conversation_cost(conversation=conversation)),
            "turns": list(conversation_selectors.conversation_turns(conversation=conversation)),
        }
        return Response(ConversationDetailSerializer(data).data)

    @extend_schema(responses={204: None}, summary="Delete one of your conversations (its turns stay in the ledger)")
    def delete(self, request, conversation_id: int):
        conversation_services.conversation_delete(conversation=_own_conversation(request, conversation_id))
        return Response(status=status.HTTP_204_NO_CONTENT)
