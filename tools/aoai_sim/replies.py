"""Azure-shaped response bodies: errors, JSON replies and SSE streams.

Everything is serialised compactly (no spaces), with members in Azure's
order.  Streams are lists of (token index, bytes, tokens): the server
sends an event with index i at ttft + i / tokens-per-second and counts
the tokens it carried (1 for a delta event, else 0).
"""

import json
import time
import uuid

# -- errors (docs/azure.md section 4) -------------------------------------

OPERATIONS = {'chat': 'ChatCompletions_Create', 'completions': 'Completions_Create',
              'embeddings': 'Embeddings_Create', 'responses': 'Responses_Create'}

QUOTA_HELP = ('Please go here: https://aka.ms/oai/quotaincrease if you would like'
              ' to further increase the default rate limit.')


def dumps(obj):
    return json.dumps(obj, separators=(',', ':'), ensure_ascii=False).encode()


def azure_error(code, message, **extra):
    err = {'code': code, 'message': message}
    err.update(extra)
    return {'error': err}


def not_found():
    return azure_error('404', 'Resource not found')


def deployment_not_found():
    return azure_error('DeploymentNotFound',
                       'The API deployment for this resource does not exist. If you'
                       ' created the deployment within the last 5 minutes, please wait'
                       ' a moment and try again.')


def unauthorized(bearer):
    if bearer:
        return azure_error('401', 'Unauthorized. Access token is missing, invalid,'
                           ' audience is incorrect (https://cognitiveservices.azure.com),'
                           ' or have expired.')
    return azure_error('401', 'Access denied due to invalid subscription key or wrong'
                       ' API endpoint. Make sure to provide a valid key for an active'
                       ' subscription and use a correct regional API endpoint for your'
                       ' resource.')


def bad_request(message, param=None, code=None):
    return azure_error(code, message, type='invalid_request_error', param=param)


def throttled(op, api_version, reason, secs):
    """429 for a quota (token/call) or PTU utilisation."""
    operation = OPERATIONS[op]
    if reason == 'utilization':
        msg = (f'Requests to the {operation} Operation under Azure OpenAI API version'
               f' {api_version} have exceeded the provisioned throughput utilization of'
               f' this deployment. Please retry after {secs} seconds.')
    else:
        what = 'call rate limit' if reason == 'call' else 'token rate limit'
        msg = (f'Requests to the {operation} Operation under Azure OpenAI API version'
               f' {api_version} have exceeded {what} of your current OpenAI S0 pricing'
               f' tier. Please retry after {secs} seconds. {QUOTA_HELP}')
    return azure_error('429', msg)


def overloaded_429(secs):
    return azure_error('429', 'System is experiencing high demand. Please retry after'
                       f' {secs} seconds.')


def server_error():
    return azure_error('server_error', 'The server had an error while processing your'
                       ' request. Retry the request or contact support if the error'
                       ' persists.', type='server_error', param=None)


def model_overloaded():
    return azure_error('503', 'The model is currently overloaded with other requests.'
                       ' Retry your request after a short wait.')


# -- reply content ---------------------------------------------------------

WORDS = ('The', ' quick', ' brown', ' fox', ' jumps', ' over', ' the', ' lazy',
         ' dog', '.', ' Tokens', ' flow', ' at', ' a', ' steady', ' pace', ',',
         ' one', ' per', ' event', '.')

SAFE = {'filtered': False, 'severity': 'safe'}
FILTER_OK = {'hate': SAFE, 'self_harm': SAFE, 'sexual': SAFE, 'violence': SAFE}
FINGERPRINT = 'fp_sim0000001'


def token(i):
    """The i-th token of every reply (one token per stream event)."""
    return WORDS[i % len(WORDS)]


def reply_text(ntokens):
    return ''.join(token(i) for i in range(ntokens))


class Reply:
    """Everything a reply needs: the call, the deployment's model, lengths."""

    def __init__(self, call, model, per_choice, finish_reason, fixed_ids=False):
        self.call = call
        self.model = model
        self.per_choice = per_choice            # completion tokens per choice
        self.finish = finish_reason
        self.completion_tokens = per_choice * call.choices
        self.prompt_tokens = call.prompt_tokens
        self.created = 1700000000 if fixed_ids else int(time.time())
        self.id = '0' * 24 if fixed_ids else uuid.uuid4().hex[:24]

    # usage shapes (section 6)
    def chat_usage(self):
        p, c = self.prompt_tokens, self.completion_tokens
        return {'completion_tokens': c,
                'completion_tokens_details': {'accepted_prediction_tokens': 0,
                                              'audio_tokens': 0, 'reasoning_tokens': 0,
                                              'rejected_prediction_tokens': 0},
                'prompt_tokens': p,
                'prompt_tokens_details': {'audio_tokens': 0, 'cached_tokens': 0},
                'total_tokens': p + c}

    def responses_usage(self):
        p, c = self.prompt_tokens, self.completion_tokens
        return {'input_tokens': p, 'input_tokens_details': {'cached_tokens': 0},
                'output_tokens': c, 'output_tokens_details': {'reasoning_tokens': 0},
                'total_tokens': p + c}

    def prompt_filter(self):
        return [{'prompt_index': 0, 'content_filter_results': FILTER_OK}]

    # -- whole JSON bodies

    def json_body(self):
        op = self.call.op
        if op == 'chat':
            return self._chat_json()
        if op == 'completions':
            return self._completions_json()
        if op == 'responses':
            return self._response_object('completed' if self.finish == 'stop' else 'incomplete')
        return self._embeddings_json()

    def _chat_json(self):
        text = reply_text(self.per_choice)
        return {'choices': [{'content_filter_results': FILTER_OK,
                             'finish_reason': self.finish, 'index': k, 'logprobs': None,
                             'message': {'annotations': [], 'content': text,
                                         'refusal': None, 'role': 'assistant'}}
                            for k in range(self.call.choices)],
                'created': self.created, 'id': 'chatcmpl-' + self.id,
                'model': self.model, 'object': 'chat.completion',
                'prompt_filter_results': self.prompt_filter(),
                'system_fingerprint': FINGERPRINT, 'usage': self.chat_usage()}

    def _completions_json(self):
        text = reply_text(self.per_choice)
        return {'choices': [{'content_filter_results': FILTER_OK,
                             'finish_reason': self.finish, 'index': k,
                             'logprobs': None, 'text': text}
                            for k in range(self.call.choices)],
                'created': self.created, 'id': 'cmpl-' + self.id, 'model': self.model,
                'object': 'text_completion', 'prompt_filter_results': self.prompt_filter(),
                'usage': {'completion_tokens': self.completion_tokens,
                          'prompt_tokens': self.prompt_tokens,
                          'total_tokens': self.prompt_tokens + self.completion_tokens}}

    def _embeddings_json(self):
        n = self.call.inputs
        data = [{'object': 'embedding', 'index': i,
                 'embedding': [round(((i * 7 + j * 13) % 17 - 8) / 100, 4) for j in range(8)]}
                for i in range(n)]
        return {'object': 'list', 'data': data, 'model': self.model,
                'usage': {'prompt_tokens': self.prompt_tokens,
                          'total_tokens': self.prompt_tokens}}

    def _response_object(self, status, text=None, usage=True):
        text = reply_text(self.per_choice) if text is None else text
        output = [] if status == 'in_progress' else [
            {'type': 'message', 'id': 'msg_' + self.id, 'status': status, 'role': 'assistant',
             'content': [{'type': 'output_text', 'text': text, 'annotations': []}]}]
        return {'id': 'resp_' + self.id, 'object': 'response', 'created_at': self.created,
                'status': status, 'model': self.model, 'output': output,
                'incomplete_details': ({'reason': 'max_output_tokens'}
                                       if status == 'incomplete' else None),
                'usage': self.responses_usage() if usage and status != 'in_progress' else None}

    # -- streams (section 6): [(token index, bytes, tokens)]

    def stream_events(self):
        if self.call.op == 'responses':
            return self._responses_events()
        return self._chat_like_events()

    def _chat_like_events(self):
        chat = self.call.op == 'chat'
        usage = self.call.include_usage
        n = self.call.choices
        base = {'created': self.created, 'id': ('chatcmpl-' if chat else 'cmpl-') + self.id,
                'model': self.model,
                'object': 'chat.completion.chunk' if chat else 'text_completion'}
        if chat:
            base['system_fingerprint'] = FINGERPRINT

        def event(index, obj, with_usage_null=True, tokens=0):
            if usage and with_usage_null:
                obj['usage'] = None
            return index, b'data: ' + dumps(obj) + b'\n\n', tokens

        def chunk(choices):
            return {'choices': choices, **base}

        def choice(k, delta=None, text=None, finish=None, filters=FILTER_OK):
            c = {'content_filter_results': filters}
            if chat:
                c['delta'] = delta if delta is not None else {}
            c.update(finish_reason=finish, index=k, logprobs=None)
            if not chat:
                c['text'] = text or ''
            return c

        events = [event(0, {'choices': [], 'created': 0, 'id': '', 'model': '',
                            'object': '', 'prompt_filter_results': self.prompt_filter()})]
        if chat:
            for k in range(n):
                events.append(event(0, chunk([choice(k, {'content': '', 'refusal': None,
                                                         'role': 'assistant'}, filters={})])))
        for i in range(self.per_choice):
            for k in range(n):
                tok = token(i)
                events.append(event(i, chunk([choice(k, {'content': tok}, tok)]), tokens=1))
        for k in range(n):
            events.append(event(self.per_choice, chunk([choice(k, finish=self.finish,
                                                               filters={})])))
        if usage:
            events.append(event(self.per_choice, chunk([]) | {
                'usage': self.chat_usage() if chat else {
                    'completion_tokens': self.completion_tokens,
                    'prompt_tokens': self.prompt_tokens,
                    'total_tokens': self.prompt_tokens + self.completion_tokens}},
                with_usage_null=False))
        events.append((self.per_choice, b'data: [DONE]\n\n', 0))
        return events

    def _responses_events(self):
        seq = 0
        events = []

        def event(index, name, obj):
            nonlocal seq
            obj = {'type': name, 'sequence_number': seq, **obj}
            seq += 1
            events.append((index, b'event: ' + name.encode() + b'\ndata: ' + dumps(obj) + b'\n\n',
                           1 if name == 'response.output_text.delta' else 0))

        item = 'msg_' + self.id
        event(0, 'response.created', {'response': self._response_object('in_progress')})
        event(0, 'response.in_progress', {'response': self._response_object('in_progress')})
        for i in range(self.per_choice):
            event(i, 'response.output_text.delta', {'item_id': item, 'output_index': 0,
                                                    'content_index': 0, 'delta': token(i)})
        text = reply_text(self.per_choice)
        event(self.per_choice, 'response.output_text.done',
              {'item_id': item, 'output_index': 0, 'content_index': 0, 'text': text})
        status = 'completed' if self.finish == 'stop' else 'incomplete'
        event(self.per_choice, 'response.' + status,
              {'response': self._response_object(status, text)})
        return events
